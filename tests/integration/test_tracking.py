"""MLflow tracking and the registry against a real `mlflow server` (SQLite backend, local artifact root) and against
the embedded SQLite default: train -> evaluate -> promote (first champion) -> a challenger that does not win is
refused -> a better one is promoted -> a modality drop is refused -> rollback; the registry's pyfunc gives the raw
weights' boxes, in process, through `medrov predict` and over REST from `mlflow models serve`; a dead server at
promotion is one clear error and leaves the registry unchanged.

One model is trained per session (into the server). Challengers are further runs of those same weights whose
evaluations are logged: one by re-evaluating, the others from that real evaluation with known offsets.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from medrov.config import load_params
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
PROMPTS = ["liver", "right kidney", "colon polyp"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args[:4]} exited with {proc.returncode}:\n{log.read_text()[-3000:] if log else ''}"
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:] if log else ''}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class MlflowServer:
    """`mlflow server --workers 1` on 127.0.0.1 with a SQLite backend and a local artifact root; restartable on
    the same port and store."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = self.root / "server.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
            ],
            env=env,
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.uri}/health", 120, self.proc, log)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    @property
    def backend(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


@pytest.fixture(scope="session")
def server_process(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(server_process):
    """The session's server, started again if a test stopped it."""
    if server_process.proc.poll() is not None:
        server_process.start()
    return server_process


@pytest.fixture(scope="session")
def work(tmp_path_factory, tiny_omnis) -> Path:
    """A private project root for the embedded store and the files a train run logs (dataset card, GX report)."""
    root = tmp_path_factory.mktemp("tracking-work")
    (root / "card").mkdir()
    (root / "card" / "README.md").write_text("# dataset card\n")
    (root / "validate" / "static").mkdir(parents=True)
    (root / "validate" / "index.html").write_text("<html>report</html>\n")
    (root / "validate" / "static" / "style.css").write_text("body {}\n")
    return root


def overrides(work: Path, tiny_omnis: Path, uri: str | None) -> list[str]:
    return [
        f"train.data={tiny_omnis / 'omnis.yaml'}",
        f"train.project={work / 'runs'}",
        "train.profiles.demo.epochs=1",
        "train.profiles.demo.imgsz=64",
        "train.profiles.demo.batch=8",
        "train.profiles.demo.workers=0",
        "text.encoder=minilm",
        f"text.cache_dir={work / 'text-cache'}",
        "evaluate.metrics=null",
        "evaluate.plots=null",
        f"tracking.dataset_card={work / 'card'}",
        f"validate.report={work / 'validate'}",
        f"tracking.uri={uri or 'null'}",
        "tracking.epoch_eval=true",  # the demo turns it off; this test checks it
    ]


@pytest.fixture(scope="session")
def trained(server_process, work, tiny_omnis):
    """The one training of the session, tracked in the server: (params, train summary)."""
    from medrov import steps
    from medrov.text import encode_cached, load_encoder

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        params = load_params(ROOT / "params.yaml", overrides(work, tiny_omnis, server_process.uri))
        # the prompts the comparisons use are in the encoder's cache, which the logged model carries
        encode_cached(load_encoder("minilm"), PROMPTS, params.text.cache_dir)
        info = steps.train(params)
    return params, info


@pytest.fixture(params=["server", "sqlite"])
def store(request, mlflow_server, work, tiny_omnis, tmp_path, monkeypatch):
    """The same scenario on the server and on the embedded default (tracking.uri null, a private project root)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if request.param == "server":
        return {
            "kind": "server",
            "params": load_params(
                ROOT / "params.yaml", [*overrides(work, tiny_omnis, mlflow_server.uri), "promote.model_name=medrov"]
            ),
        }
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.setenv("MEDROV_ROOT", str(project))
    return {
        "kind": "sqlite",
        "params": load_params(ROOT / "params.yaml", overrides(work, tiny_omnis, None)),
        "project": project,
    }


def test_a_training_is_one_run_with_params_provenance_epoch_metrics_artifacts_and_model(trained, mlflow_server):
    from mlflow import MlflowClient

    from medrov.config import flatten

    params, info = trained
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(info["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    # ultralytics' own MLflow callback is off: this experiment holds our train run only (no duplicate)
    train_runs = client.search_runs([run.info.experiment_id], "tags.`medrov.step` = 'train'")
    assert [r.info.run_id for r in train_runs] == [run.info.run_id]
    assert len(client.search_experiments()) == 2  # Default + ours: nothing logged elsewhere
    # the settings in force (the train step's sections, the active profile only), params.yaml whole as an artifact
    from medrov.tracking import settings_in_force

    flat = settings_in_force(params, "train")
    in_force = {k: v for k, v in run.data.params.items() if k.startswith("pseudo.in_force.")}
    assert set(run.data.params) == set(flat) | set(in_force)
    assert not any(k.startswith(("train.profiles.paper.", "demo.", "tune.", "data.")) for k in run.data.params)
    assert "params.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(flat) < len(flatten(params)) / 2
    # MiniLM has no image tower: the run says the negatives asked for in params.yaml are off, and why
    assert run.data.params["pseudo.negatives"] == "True" and in_force["pseudo.in_force.negatives"] == "False"
    assert in_force["pseudo.in_force.negatives_off_reason"] == "encoder has no image tower"
    assert "pseudo/labels" in run.data.metrics and "pseudo/ms_per_batch" in run.data.metrics
    assert run.data.params["train.profiles.demo.epochs"] == "1" and "promote.min_gain" not in run.data.params
    # a description, and the Omnis folder as the dataset input with its digest
    assert (
        "profile **demo**" in run.data.tags["mlflow.note.content"] and "minilm" in run.data.tags["mlflow.note.content"]
    )
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["omnis"] and inputs[0].dataset.digest
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    tags = run.data.tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["medrov.git_commit"] == commit == tags["mlflow.source.git.commit"]
    presence = (Path(params.train.data).parent / "presence.csv").read_bytes()
    import hashlib

    assert tags["medrov.data.presence_md5"] == hashlib.md5(presence).hexdigest()
    assert tags["medrov.data.omnis_dvc_md5"] == "not in dvc.lock"  # tmp data: DVC never produced it
    assert tags["medrov.encoder"] == info["encoder"]["identity"] and tags["medrov.encoder.spec"] == "minilm"
    assert tags["medrov.encoder.fallback_used"] == "false" and tags["medrov.encoder.dim"] == "384"
    # per-epoch: ultralytics' losses and our open-vocabulary mAP50 base / novel / per modality on promote.split
    metrics = run.data.metrics
    for key in (
        "train/box_loss",
        "train/cls_loss",
        "metrics/mAP50B",
        "lr/pg0",
        "epoch/val/map50/all",
        "epoch/val/map50/base",
        "epoch/val/map50/novel",
        "epoch/val/modality/ct/map50",
        "epoch/val/modality/mri/map50",
    ):
        assert key in metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/box_loss")] == [1]  # ultralytics' epoch 1
    assert not any(k.endswith("/images") for k in metrics)  # counts are tags, not charts
    assert 0.0 <= metrics["epoch/val/map50/all"] <= 1.0
    artifacts = {
        a.path
        for d in ("weights", "train", "dataset_card", "validate_report", "validate_report/static")
        for a in client.list_artifacts(run.info.run_id, d)
    }
    assert {
        "weights/best.pt",
        "train/results.csv",
        "train/results.png",
        "train/medrov.json",
        "dataset_card/README.md",
        "validate_report/index.html",
        "validate_report/static/style.css",
    } <= artifacts
    assert any(a.endswith(".png") and "curve" in a for a in artifacts)
    record = json.loads((Path(info["save_dir"]) / "mlflow.json").read_text())
    assert record["run_id"] == run.info.run_id and record["model_uri"] == tags["medrov.model_uri"]


def _shifted(result: dict, offset: float, modality_offsets: dict[str, float] | None = None) -> dict:
    """A copy of a real evaluation with every mAP moved by ``offset`` (one modality by its own), within [0, 1]."""
    out = copy.deepcopy(result)
    move = lambda v, d: float(min(1.0, max(0.0, v + d)))  # noqa: E731
    for group in ("all", "base", "novel"):
        if group in out:
            out[group] = {
                **out[group],
                "map50": move(out[group]["map50"], offset),
                "map50_95": move(out[group]["map50_95"], offset),
            }
    for modality, summary in out["modality"].items():
        d = (modality_offsets or {}).get(modality, offset)
        if "all" in summary:
            summary["all"] = {
                **summary["all"],
                "map50": move(summary["all"]["map50"], d),
                "map50_95": move(summary["all"]["map50_95"], d),
            }
    return out


def test_promote_gate_rollback_and_the_champion_model(store, trained, tmp_path):
    from medrov import steps, tracking
    from medrov.model.build import Prompter
    from medrov.model.detector import Detector
    from medrov.text import load_encoder

    params, info = store["params"], trained[1]
    weights = Path(info["weights"])
    client = tracking.connect(params.tracking)
    if store["kind"] == "server":
        first = info["mlflow"]["run_id"]
    else:  # the embedded store gets the same weights as a run; the default URI lies in the project root
        assert client.tracking_uri == f"sqlite:///{store['project'] / 'mlflow.db'}"
        first = steps.log_weights_run(params, weights, encoder_spec="minilm")

    # 1. the first model, champion. Its val evaluation exists once either way: the tracked training made it while
    # warm (server store), or promote makes it (the embedded store's imported run has none)
    if store["kind"] == "server":
        assert info["mlflow"]["gate_eval_run_id"]
    one = steps.promote(params, run_id=first)
    assert one["decision"] == "first" and one["promoted"] and one["version"] == "1"
    version = client.get_model_version_by_alias("medrov", "champion")
    assert str(version.version) == "1"
    # registered through register_model: the version names its logged model, which lists the version back
    model_uri = client.get_run(first).data.tags["medrov.model_uri"]
    assert version.source == model_uri and version.run_id == first and f"Trained in run {first}" in version.description
    listed = json.loads(client.get_logged_model(model_uri.split("/")[-1]).tags["mlflow.modelVersions"])
    assert {"name": "medrov", "version": 1} in [{**v, "version": int(v["version"])} for v in listed]
    evaluations = client.search_runs(
        [client.get_run(first).info.experiment_id],
        f"tags.`medrov.train_run_id` = '{first}' and tags.`medrov.split` = 'val'",
    )
    assert len(evaluations) == 1 and evaluations[0].data.tags["mlflow.parentRunId"] == first
    real = json.loads(
        Path(client.download_artifacts(evaluations[0].info.run_id, "eval_val.json", str(tmp_path))).read_text()
    )
    assert real["split"] == "val" and set(one["challenger"]["modality"]) == {
        m for m, s in real["modality"].items() if "all" in s
    }

    # 2. the same weights again (a real re-evaluation): no gain, refused, champion unchanged
    same = steps.log_weights_run(params, weights, encoder_spec="minilm", name="same")
    steps.evaluate(weights, params, split="val", train_run_id=same, quiet=True)
    two = steps.promote(params, run_id=same)
    assert two["decision"] == "refused" and not two["promoted"] and "min_gain" in two["reason"]
    assert str(client.get_model_version_by_alias("medrov", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("medrov", "challenger").version) == two["version"] == "2"
    refused = client.get_model_version("medrov", "2").tags
    assert refused["medrov.promote.decision"] == "refused" and "min_gain" in refused["medrov.promote.reason"]
    assert refused["medrov.promote.champion_version"] == "1" and float(refused["medrov.promote.gain"]) == pytest.approx(
        0, abs=1e-6
    )

    # 3. better by 0.2 everywhere: promoted, and it remembers whom it replaced
    better = steps.log_weights_run(params, weights, encoder_spec="minilm", name="better")
    tracking.record_evaluation(params, better, _shifted(real, 0.2), "val")
    three = steps.promote(params, run_id=better)
    assert three["decision"] == "promoted" and three["gain"] >= 0.1
    assert str(client.get_model_version_by_alias("medrov", "champion").version) == "3"
    assert client.get_model_version("medrov", "3").tags["medrov.previous_champion"] == "1"

    # 4. better overall but one modality collapses: refused for that modality
    modality = sorted(one["challenger"]["modality"])[0]
    dropped = steps.log_weights_run(params, weights, encoder_spec="minilm", name="modality-drop")
    tracking.record_evaluation(params, dropped, _shifted(real, 0.3, {modality: -0.3}), "val")
    four = steps.promote(params, run_id=dropped)
    assert (
        four["decision"] == "refused"
        and f"{modality} {params.promote.metric} dropped" in four["reason"]  # the gate's metric names the drop
        and "min_gain" not in four["reason"]
    )
    assert str(client.get_model_version_by_alias("medrov", "champion").version) == "3"

    # promoting the champion's run again changes nothing
    assert steps.promote(params, run_id=better)["decision"] == "already champion"
    assert len(client.search_model_versions("name = 'medrov'")) == 4

    # 5. rollback: the previous champion is back
    back = steps.rollback(params)
    assert (back["from_version"], back["to_version"]) == ("3", "1")
    assert str(client.get_model_version_by_alias("medrov", "champion").version) == "1"
    rows = {r["version"]: r for r in steps.list_models(params)}
    assert rows["1"]["aliases"] == ["champion"] and rows["4"]["aliases"] == ["challenger"]
    assert (
        rows["2"]["decision"] == "refused" and rows["3"]["decision"] == "promoted" and rows["1"]["decision"] == "first"
    )

    # the champion from the registry gives the raw weights' boxes on the same image
    image = sorted((Path(params.train.data).parent / "images").rglob("*.png"))[0]
    prompts = PROMPTS
    raw = Detector(weights, Prompter(load_encoder("minilm"), params.text.cache_dir))
    raw.set_vocabulary(prompts)
    # a one-epoch model scores ~5e-5 at best: a near-zero threshold still leaves boxes to compare
    expected = raw.predict([image], imgsz=64, conf=1e-6, max_det=30)[0]
    assert len(expected.names) > 0
    model = tracking.load_pyfunc(params, "models:/medrov@champion")
    from medrov.model.pyfunc import encode_image_file

    table = model.predict(
        __import__("pandas").DataFrame(
            {"image": [str(image), encode_image_file(image)], "prompts": ["; ".join(prompts)] * 2}
        ),
        params={"conf": 1e-6, "imgsz": 64, "max_det": 30},
    )
    assert list(table.columns) == ["image", "class", "score", "x1", "y1", "x2", "y2"]
    want = sorted(zip(map(tuple, np.round(expected.boxes, 2)), expected.names, expected.scores))
    for row in (0, 1):  # by path and as encoded bytes
        got = table[table["image"] == row]
        have = sorted(
            zip(map(tuple, np.round(got[["x1", "y1", "x2", "y2"]].to_numpy(), 2)), got["class"], got["score"])
        )
        assert len(have) == len(want)
        np.testing.assert_allclose([h[0] for h in have], [w[0] for w in want], atol=0.02)
        assert [h[1] for h in have] == [w[1] for w in want]
        np.testing.assert_allclose([h[2] for h in have], [w[2] for w in want], rtol=1e-5)

    if store["kind"] == "sqlite":
        # `medrov predict --weights models:/medrov@champion` and `medrov models`, in process (the DVC test runs
        # `medrov models` as a subprocess in a checkout with no environment set)
        from typer.testing import CliRunner

        from medrov.cli import app

        out = tmp_path / "pred"
        sets = sum((["-S", o] for o in overrides_of(params)), [])
        result = CliRunner().invoke(
            app,
            [
                "predict",
                str(image),
                "-p",
                "liver",
                "-p",
                "right kidney",
                "-p",
                "colon polyp",
                "--weights",
                "models:/medrov@champion",
                "--conf",
                "0.000001",
                "--imgsz",
                "64",
                "--out",
                str(out),
                *sets,
            ],
        )
        assert result.exit_code == 0, result.output[-3000:]
        payload = json.loads(next(out.glob("*.json")).read_text())
        assert len(payload["frames"][0]["boxes"]) == len(raw.predict([image], imgsz=64, conf=1e-6)[0].names) > 0
        # without --weights, predict uses the registry's champion (this project has no local model at all)
        default = CliRunner().invoke(
            app,
            [
                "predict",
                str(image),
                "-p",
                "liver",
                "--conf",
                "0.000001",
                "--imgsz",
                "64",
                "--out",
                str(tmp_path / "pred-default"),
                *sets,
            ],
        )
        assert default.exit_code == 0, default.output[-3000:]
        lines = default.output.splitlines()
        printed = json.loads("\n".join(lines[len(lines) - 1 - lines[::-1].index("{") :]))  # the summary is printed last
        assert printed["model"] == "models:/medrov@champion"
        listing = CliRunner().invoke(app, ["models", *sets])
        assert listing.exit_code == 0, listing.output[-3000:]
        lines = listing.output.splitlines()
        assert str(store["project"] / "mlflow.db") in lines[0]
        assert any(line.split()[0] == "1" and "champion" in line for line in lines[2:])
        assert any(line.split()[0] == "4" and "challenger" in line and "refused" in line for line in lines[2:])


def overrides_of(params) -> list[str]:
    """The dotted overrides that rebuild these params in a subprocess."""
    return [
        f"train.data={params.train.data}",
        f"text.encoder={params.text.encoder}",
        f"text.cache_dir={params.text.cache_dir}",
    ]


def test_mlflow_models_serve_answers_with_boxes(trained, mlflow_server, tmp_path):
    """REST scoring of the registry's champion with `mlflow models serve --env-manager local` on 127.0.0.1."""
    from medrov import steps
    from medrov.model.pyfunc import encode_image_file

    params, info = trained
    served = load_params(
        ROOT / "params.yaml",
        [*overrides_of(params), f"tracking.uri={mlflow_server.uri}", "promote.model_name=medrov-serve"],
    )
    assert steps.promote(served, run_id=info["mlflow"]["run_id"])["decision"] == "first"
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),  # uvicorn
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/medrov-serve@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, proc, log)
        image = sorted((Path(params.train.data).parent / "images").rglob("*.png"))[0]
        body = {
            "dataframe_split": {
                "columns": ["image", "prompts"],
                "data": [[encode_image_file(image), "liver; right kidney"]],
            },
            "params": {"conf": 1e-6, "imgsz": 64, "max_det": 10},
        }
        response = requests.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=120)
        assert response.status_code == 200, response.text[:2000]
        predictions = response.json()["predictions"]
        assert 0 < len(predictions) <= 10
        assert set(predictions[0]) == {"image", "class", "score", "x1", "y1", "x2", "y2"}
        assert {p["class"] for p in predictions} <= {"liver", "right kidney"} and all(
            p["image"] == 0 for p in predictions
        )
        bad = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            timeout=60,
            json={"dataframe_split": {"columns": ["image", "prompts"], "data": [["not-an-image", "liver"]]}},
        )
        assert bad.status_code >= 400 and "neither an existing file nor base64" in bad.text
    finally:
        stop(proc)


def test_promotion_with_the_server_down_is_one_clear_error_and_changes_nothing(
    trained, mlflow_server, capsys, monkeypatch
):
    """`medrov promote` (its console entry point) while the server is down; the registry is then read from the
    server's own SQLite store."""
    from mlflow import MlflowClient

    from medrov.cli import main

    params, info = trained

    def registry(client):
        return sorted(
            (
                m.name,
                tuple(sorted((a, str(v)) for a, v in m.aliases.items())),
                len(client.search_model_versions(f"name = '{m.name}'")),
            )
            for m in client.search_registered_models()
        )

    before = registry(MlflowClient(mlflow_server.uri, registry_uri=mlflow_server.uri))
    mlflow_server.stop()  # the next test that needs it starts it again
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "medrov",
            "promote",
            "--run-id",
            info["mlflow"]["run_id"],
            *sum((["-S", o] for o in overrides_of(params)), []),
            "-S",
            f"tracking.uri={mlflow_server.uri}",
            "-S",
            "promote.model_name=medrov-down",
        ],
    )
    start = time.time()
    with pytest.raises(SystemExit) as exit_:
        main()
    took = time.time() - start
    assert exit_.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1
        and "TrackingError" in errors[0]
        and mlflow_server.uri in errors[0]
        and "unreachable" in errors[0]
    )
    assert took < 30
    after = registry(MlflowClient(mlflow_server.backend, registry_uri=mlflow_server.backend))
    assert after == before and "medrov-down" not in {name for name, *_ in after}
