"""predict matches training: one 3D -> 2D path shared with convert, the window and the text encoder recorded in
the checkpoint and used (or refused) by ``predict``, the JSON saying what was used, readable overlays."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medrov.config import load_params
from medrov.errors import ConfigError, EncoderError
from medrov.model.predict import load_inputs
from tests.conftest import ROOT
from tests.data.conftest import Corpus

PROMPTS = ["liver", "spleen"]
# the organs of tests.data.conftest.ct_volume are 40-95 HU over air at -1000: under this narrow window they span
# most of 0..255, under the default [-500, 1000] they sit within a few grey levels of each other
TRAINED_WINDOW = (0.0, 200.0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One CT volume converted by ``medrov convert`` under TRAINED_WINDOW: (raw NIfTI path, {slice: png pixels})."""
    from medrov.data import convert

    root = tmp_path_factory.mktemp("window")
    corpus = Corpus(root)
    built = corpus.nifti_ct(n=1)
    corpus.write()
    params = load_params(
        ROOT / "params.yaml", ["data.workers=1", f"data.ct_window=[{TRAINED_WINDOW[0]},{TRAINED_WINDOW[1]}]"]
    )
    convert.run(params.data, sources_file=corpus.sources_file, out_dir=corpus.out, progress=False)
    manifest = pd.read_parquet(corpus.out / "manifest.parquet")
    slices = {int(r.slice_index): np.asarray(Image.open(corpus.out / r.image)) for r in manifest.itertuples()}
    assert len(slices) >= 3, slices.keys()
    return built.items["case_000"]["image"], slices


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory) -> Path:
    """An untrained yolov8n-worldv2 checkpoint with no training record (as weights older than the record)."""
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    import torch

    from medrov.model.build import build_world

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("world") / "world.pt"
    torch.save({"model": build_world("n", nc=len(PROMPTS)), "train_args": {"imgsz": 64}}, weights)
    return weights


@pytest.fixture(scope="module")
def minilm_identity() -> dict:
    from medrov.text import build_encoder

    return build_encoder("minilm").describe()


def _params(tmp_path: Path, *extra: str):
    return load_params(
        ROOT / "params.yaml", ["text.encoder=minilm", f"text.cache_dir={tmp_path / 'text-cache'}", *extra]
    )


def _recorded(tiny_world: Path, tmp_path: Path, encoder: dict | None, window=TRAINED_WINDOW) -> Path:
    """A copy of the tiny model whose checkpoint records ``encoder`` and the CT window it was trained with."""
    from medrov.model.record import training_record, write_record

    weights = tmp_path / "recorded.pt"
    weights.write_bytes(tiny_world.read_bytes())
    params = load_params(ROOT / "params.yaml", [f"data.ct_window=[{window[0]},{window[1]}]"])
    write_record(weights, training_record(params, encoder))
    return weights


class _FedFrames:
    """Wraps the real Detector.predict and keeps the images it was fed."""

    def __init__(self, monkeypatch):
        from medrov.model.detector import Detector

        self.images: list[np.ndarray] = []
        original = Detector.predict

        def spy(detector, images, *args, **kwargs):
            self.images.extend(np.array(im) for im in images)
            return original(detector, images, *args, **kwargs)

        monkeypatch.setattr(Detector, "predict", spy)


# ---------------------------------------------------------------- one 3D -> 2D path


def test_convert_and_predict_give_the_same_slices_under_the_same_window(converted):
    raw, slices = converted
    frames = load_inputs(raw, modality="ct", ct_window=TRAINED_WINDOW)
    for k, png in slices.items():
        assert np.array_equal(frames[k].image, png), f"slice {k} differs from convert's"
    # the default window gives other pixels: the test can tell the windows apart
    default = load_inputs(raw, modality="ct")
    assert all(not np.array_equal(default[k].image, png) for k, png in slices.items())


def test_volume_slices_reorients_before_slicing(tmp_path):
    """A volume stored in another orientation (x flipped in the affine) slices like the RAS original."""
    from medrov.data.slicing import volume_slices
    from medrov.io.volume import read_nifti
    from tests.data.conftest import ct_volume, ras_affine, save_nifti

    ct, _ = ct_volume(0)
    ras = save_nifti(tmp_path / "ras.nii.gz", ct)
    flipped_affine = ras_affine()
    flipped_affine[0, 0] *= -1
    flipped_affine[0, 3] = (ct.shape[0] - 1) * 1.5  # same voxels in the world, stored right-to-left
    las = save_nifti(tmp_path / "las.nii.gz", ct[::-1], flipped_affine)
    a = volume_slices(read_nifti(ras), "ct", TRAINED_WINDOW, (0.5, 99.5))
    b = volume_slices(read_nifti(las), "ct", TRAINED_WINDOW, (0.5, 99.5))
    assert a.shape == (ct.shape[2], ct.shape[1], ct.shape[0]) and a.dtype == np.uint8
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- the recorded window


def test_predict_feeds_the_model_the_convert_slices_of_the_recorded_window(
    converted, tiny_world, minilm_identity, tmp_path, monkeypatch
):
    from medrov import steps

    raw, slices = converted
    weights = _recorded(tiny_world, tmp_path, minilm_identity)
    fed = _FedFrames(monkeypatch)
    # params.yaml keeps the default window: the one recorded with the weights wins
    summary = steps.predict(_params(tmp_path), raw, PROMPTS, tmp_path / "out", weights=str(weights), imgsz=64)
    assert len(fed.images) == 6
    for k, png in slices.items():
        assert np.array_equal(fed.images[k], png), f"slice {k}: predict fed another image than convert wrote"
    payload = json.loads(Path(summary["json"][0]).read_text())
    assert payload["normalisation"]["ct_window"] == list(TRAINED_WINDOW)
    assert payload["normalisation"]["from"]["ct_window"] == "weights"
    assert payload["normalisation"]["used"] == "CT window [0, 200] HU (recorded with the weights)"

    # --window overrides the record: other pixels reach the model
    fed.images.clear()
    summary = steps.predict(
        _params(tmp_path), raw, PROMPTS, tmp_path / "out2", weights=str(weights), imgsz=64, ct_window="-500,1000"
    )
    assert all(not np.array_equal(fed.images[k], png) for k, png in slices.items())
    payload = json.loads(Path(summary["json"][0]).read_text())
    assert payload["normalisation"]["ct_window"] == [-500.0, 1000.0]
    assert payload["normalisation"]["from"]["ct_window"] == "override"


def test_bad_window_override_is_refused_before_loading_a_model(tmp_path):
    from medrov import steps

    for window, words in (("200,0", "LO < HI"), ("abc", "two numbers"), ("1,2,3", "two numbers")):
        with pytest.raises(ConfigError, match=words):
            steps.predict(_params(tmp_path), tmp_path, PROMPTS, tmp_path / "out", ct_window=window)
    with pytest.raises(ConfigError, match=r"--percentiles must lie in \[0, 100\]"):
        steps.predict(_params(tmp_path), tmp_path, PROMPTS, tmp_path / "out", mri_percentiles="1,120")


def test_cli_passes_negative_window_and_percentile_overrides(tmp_path):
    from typer.testing import CliRunner

    from medrov.cli import app

    args = ["predict", str(tmp_path), "-p", "liver", "--out", str(tmp_path / "out"), "-S", "text.encoder=minilm"]
    # a negative LO is a value, not an option; the percentiles override reaches the step and is checked there
    result = CliRunner().invoke(app, [*args, "--window", "-1000,1000", "--percentiles", "1,120"])
    assert isinstance(result.exception, ConfigError), result.output
    assert "--percentiles must lie in [0, 100], got 1,120" in str(result.exception)


def test_weights_with_no_record_warn_once_and_use_the_params(converted, tiny_world, tmp_path, caplog):
    from medrov import steps

    raw, _ = converted
    with caplog.at_level(logging.WARNING):
        summary = steps.predict(
            _params(tmp_path, "data.ct_window=[-100,300]"),
            raw,
            PROMPTS,
            tmp_path / "out",
            weights=str(tiny_world),
            imgsz=64,
        )
    warned = [r.getMessage() for r in caplog.records if "no training record" in r.getMessage()]
    assert len(warned) == 1 and str(tiny_world) in warned[0] and "\n" not in warned[0]
    assert summary["normalisation"]["ct_window"] == [-100.0, 300.0]
    assert summary["normalisation"]["from"] == {"ct_window": "params", "mri_percentiles": "params"}
    assert summary["encoder_check"] == "no record"


# ---------------------------------------------------------------- the recorded encoder


def test_predict_refuses_weights_trained_with_another_encoder(converted, tiny_world, tmp_path):
    from medrov import steps
    from medrov.text import OpenClipEncoder
    from tests.tiny_models import build_tiny_clip

    raw, _ = converted
    clip = OpenClipEncoder(f"local-dir:{build_tiny_clip(tmp_path / 'clip')}").describe()
    weights = _recorded(tiny_world, tmp_path, clip)
    with pytest.raises(EncoderError) as refused:
        steps.predict(_params(tmp_path), raw, PROMPTS, tmp_path / "out", weights=str(weights), imgsz=64)
    message = str(refused.value)
    assert clip["identity"] in message and "minilm" in message and "--allow-encoder-mismatch" in message
    assert str(weights) in message and not (tmp_path / "out").exists()

    summary = steps.predict(
        _params(tmp_path), raw, PROMPTS, tmp_path / "out", weights=str(weights), imgsz=64, allow_encoder_mismatch=True
    )
    encoder = json.loads(Path(summary["json"][0]).read_text())["encoder"]
    assert encoder["identity"].startswith("minilm:") and encoder["trained_with"] == clip["identity"]
    assert encoder["check"] == "mismatch allowed"


@pytest.fixture(scope="module")
def predicted_nothing(converted, tiny_world, minilm_identity, tmp_path_factory):
    """``steps.predict`` of the converted volume with recorded weights at conf 1 (no box): (summary, weights)."""
    from medrov import steps

    raw, _ = converted
    tmp_path = tmp_path_factory.mktemp("nothing")
    weights = _recorded(tiny_world, tmp_path, minilm_identity)
    summary = steps.predict(_params(tmp_path), raw, PROMPTS, tmp_path / "out", weights=str(weights), imgsz=64, conf=1.0)
    return summary, weights


def test_predict_json_records_weights_encoder_and_normalisation(predicted_nothing, minilm_identity):
    summary, weights = predicted_nothing
    payload = json.loads(Path(summary["json"][0]).read_text())
    assert payload["weights"] == {"path": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert payload["encoder"]["identity"] == minilm_identity["identity"] == payload["encoder"]["trained_with"]
    assert payload["encoder"]["check"] == "match" and payload["encoder"]["dim"] == 384
    assert payload["normalisation"]["ct_window"] == list(TRAINED_WINDOW)
    assert payload["normalisation"]["mri_percentiles"] == [0.5, 99.5]
    assert payload["modality"] == "ct" and summary["model"] == str(weights)


# ---------------------------------------------------------------- readable outputs


def test_a_volume_with_no_box_still_gets_a_readable_montage(predicted_nothing):
    summary, _ = predicted_nothing
    assert summary["boxes"] == 0 and summary["overlays"] == []
    [montage] = summary["montages"]
    assert Path(montage).name == "case_000_montage.png"
    with Image.open(montage) as sheet:
        # 6 slices of 32x32, each upscaled 16 times to 512 px, 3 per row, each under its caption strip
        assert sheet.width == 3 * 512 and 2 * 512 < sheet.height < 2 * 512 + 200
        pixels = np.asarray(sheet.convert("L"))
    assert pixels[pixels.shape[0] // 4].std() > 0  # the slices are there, not a blank sheet


def test_overlay_upscale_is_whole_and_reaches_512():
    from medrov.model.detector import Detections
    from medrov.model.overlays import draw_overlay, upscale_factor

    assert upscale_factor(122, 101) == 5 and upscale_factor(600, 400) == 1 and upscale_factor(512, 10) == 1
    det = Detections(np.array([[10.0, 20.0, 40.0, 60.0]]), np.array([0.9]), ["liver"])
    image = np.zeros((101, 122), dtype=np.uint8)
    drawn = np.asarray(draw_overlay(image, det))
    assert drawn.shape == (505, 610, 3)
    # the box outline lands on the scaled coordinates (x0 = 10 * 5), with the label colour
    assert drawn[150:300, 50].any() and not drawn[150:300, 45].any()


def test_fallback_encoder_warning_is_one_short_line_once(caplog):
    from medrov.text import encoders

    with caplog.at_level(logging.DEBUG, logger="medrov.text.encoders"):
        for _ in range(2):
            encoder = encoders.load_encoder("hf-hub:medrov-tests/not-cached", fallback="minilm")
            assert encoder.spec == "minilm"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert len(warnings[0]) < 160 and "\n" not in warnings[0] and "minilm" in warnings[0]


def test_loading_the_packaged_encoder_draws_no_progress_bar(capfd):
    from medrov.text import build_encoder

    build_encoder("minilm").encode_text(["liver"])
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "%|" not in err
