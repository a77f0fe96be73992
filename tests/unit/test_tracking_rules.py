"""The pure parts of tracking: the promotion rule, metric names, the store URI, DVC hashes, pyfunc input parsing."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from medrov.config import PromoteParams, load_params
from tests.conftest import ROOT


def gate(all_, modality, metric="map50"):
    return {"split": "val", "metric": metric, "all": all_, "base": None, "novel": None, "modality": modality}


SECTION = PromoteParams(min_gain=0.01, max_modality_drop=0.05)


def test_first_model_becomes_champion():
    from medrov.tracking import decide

    d = decide(gate(0.0, {"ct": 0.0}), None, SECTION)
    assert d["promote"] and d["decision"] == "first"


def test_gain_at_least_min_gain_and_no_large_modality_drop_is_promoted():
    from medrov.tracking import decide

    d = decide(gate(0.51, {"ct": 0.46, "mri": 0.60}), gate(0.50, {"ct": 0.50, "mri": 0.55}), SECTION)
    assert d["promote"] and d["decision"] == "promoted"
    assert d["gain"] == pytest.approx(0.01) and d["drops"]["ct"] == pytest.approx(0.04)


@pytest.mark.parametrize(
    ("challenger", "why"),
    [
        (gate(0.505, {"ct": 0.5}), "gain +0.0050 < min_gain 0.01"),  # better, but not by enough
        (gate(0.40, {"ct": 0.5}), "gain -0.1000"),  # worse
        (gate(0.60, {"ct": 0.44}), "ct map50 dropped 0.0600 (0.5000 -> 0.4400) > max_modality_drop 0.05"),
        (gate(0.60, {}), "modality ct not evaluated"),
    ],
)
def test_refusals_say_why(challenger, why):
    from medrov.tracking import decide

    d = decide(challenger, gate(0.50, {"ct": 0.50}), SECTION)
    assert not d["promote"] and d["decision"] == "refused" and why in d["reason"]


def test_eval_metric_names_round_trip_into_the_gate():
    from medrov.tracking import eval_metrics, gate_from_metrics

    result = {
        "images": 7,
        "all": {"map50": 0.4, "map50_95": 0.2, "classes": 3},
        "base": {"map50": 0.5, "map50_95": 0.3},
        "novel": {"map50": 0.1, "map50_95": 0.05},
        "modality": {"ct": {"all": {"map50": 0.6, "map50_95": 0.3}}, "xray": {"images": 2, "boxes": 0}},
    }
    flat = eval_metrics(result, "val")
    assert flat["val/map50/all"] == 0.4 and flat["val/map50_95/novel"] == 0.05 and flat["val/modality/ct/map50"] == 0.6
    assert "val/modality/xray/map50" not in flat  # a modality without boxes has no mAP, not a zero
    g = gate_from_metrics(flat, "val", "map50")
    assert (g["all"], g["base"], g["novel"], g["modality"]) == (0.4, 0.5, 0.1, {"ct": 0.6})
    assert gate_from_metrics(flat, "test", "map50") is None


def test_tracking_uri_env_wins_then_params_then_the_embedded_default(monkeypatch, tmp_path):
    from medrov.tracking import tracking_uri

    monkeypatch.setenv("MEDROV_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    section = load_params(ROOT / "params.yaml").tracking
    assert tracking_uri(section) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    section.uri = "sqlite:///stores/m.db"  # relative: from the project root, never the working directory
    assert tracking_uri(section) == f"sqlite:///{tmp_path / 'stores' / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(section) == "http://127.0.0.1:5999"


def test_connecting_to_one_store_does_not_redirect_the_next(monkeypatch, tmp_path):
    """MLflow exports the URI it is pointed at as MLFLOW_TRACKING_URI; that must not outrank the next params."""
    import os

    from medrov.tracking import connect

    monkeypatch.setenv("MEDROV_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    section = load_params(ROOT / "params.yaml").tracking
    section.uri = f"sqlite:///{tmp_path / 'a.db'}"
    assert connect(section).tracking_uri == section.uri
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    section.uri = f"sqlite:///{tmp_path / 'b.db'}"
    assert connect(section).tracking_uri == section.uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", section.uri)  # the user's own setting stays as it was
    section.uri = f"sqlite:///{tmp_path / 'a.db'}"
    assert connect(section).tracking_uri == f"sqlite:///{tmp_path / 'b.db'}" == os.environ["MLFLOW_TRACKING_URI"]


def test_unknown_tracking_or_promote_key_is_rejected():
    from medrov.errors import ConfigError

    with pytest.raises(ConfigError, match="promote.min_gian"):
        load_params(ROOT / "params.yaml", ["promote.min_gian=0.1"])
    with pytest.raises(ConfigError, match="promote.split"):
        load_params(ROOT / "params.yaml", ["promote.split=dev"])


def test_dvc_hash_comes_from_dvc_lock(tmp_path):
    from medrov.tracking import dvc_hash

    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  convert:\n    outs:\n    - path: data/omnis\n      hash: md5\n      md5: abc123.dir\n"  # noqa: E501
    )
    assert dvc_hash(tmp_path / "data" / "omnis", tmp_path) == "abc123.dir"
    assert dvc_hash(tmp_path / "data" / "other", tmp_path) is None


def test_pyfunc_inputs_prompts_and_images():
    from PIL import Image

    from medrov.model.build import ModelError
    from medrov.model.pyfunc import decode_image, parse_prompts

    assert parse_prompts("liver; right kidney ;") == ["liver", "right kidney"]
    assert parse_prompts(["liver", "spleen"]) == ["liver", "spleen"]
    with pytest.raises(ModelError, match="at least one prompt"):
        parse_prompts(" ; ")
    pixels = (np.arange(24 * 32) % 251).astype(np.uint8).reshape(24, 32)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    assert np.array_equal(decode_image(base64.b64encode(buf.getvalue()).decode()), pixels)
    assert np.array_equal(decode_image(buf.getvalue()), pixels)
    with pytest.raises(ModelError, match="neither an existing file nor base64"):
        decode_image("/no/such/file.png")
    with pytest.raises(ModelError, match="cannot decode image"):
        decode_image(base64.b64encode(b"not an image").decode())


def test_table_prompter_prefers_whole_cached_lists_then_rows():
    import torch

    from medrov.model.build import ModelError
    from medrov.model.pyfunc import TablePrompter

    rows = torch.eye(3, 384)
    exact = torch.full((2, 384), 0.5)
    prompter = TablePrompter(
        {
            "encoder": {"spec": "", "dim": 384},
            "texts": ["a", "b", "c"],
            "embeddings": rows,
            "lists": [(["a", "b"], exact)],
        }
    )
    assert torch.equal(prompter(["a", "b"])[:, :384], exact)  # the list as cached, zero-padded to 512
    assert prompter(["c", "a"]).shape == (2, 512) and torch.equal(prompter(["c", "a"])[:, :384], rows[[2, 0]])
    with pytest.raises(ModelError, match="names no encoder"):
        prompter(["unknown prompt"])


class _RacingClient:
    """log_inputs fails the way MLflow's SQL store does when another run inserted the same dataset first."""

    def __init__(self, failures: int, message: str):
        self.failures, self.message, self.calls = failures, message, 0

    def log_inputs(self, run_id, datasets):
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if self.calls <= self.failures:
            raise MlflowException(self.message)


def test_a_dataset_row_created_by_a_concurrent_run_is_retried_not_fatal():
    from mlflow.exceptions import MlflowException

    from medrov.tracking.store import log_inputs_once_created

    race = '(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "dataset_pk"'
    client = _RacingClient(1, race)
    log_inputs_once_created(client, "run", object())
    assert client.calls == 2  # the second attempt finds the row
    other = _RacingClient(1, "RESOURCE_DOES_NOT_EXIST: run not found")
    with pytest.raises(MlflowException, match="run not found"):
        log_inputs_once_created(other, "run", object())
    assert other.calls == 1  # any other error is not retried
    stuck = _RacingClient(5, race)
    with pytest.raises(MlflowException, match="UniqueViolation"):
        log_inputs_once_created(stuck, "run", object(), attempts=2)
    assert stuck.calls == 2
