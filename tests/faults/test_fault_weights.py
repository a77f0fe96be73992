"""Finding 2: model files are data: a pickle's payload never runs unless the user trusts the file."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch


class _Payload:
    """Unpickling this touches ``marker``: stands for any code a hostile .pt could run."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


TRUST_ENV = "MEDROV_TRUST_WEIGHTS"  # medrov.model.weights.TRUST_ENV, spelled out: the tests also run on older code


def _evil(tmp_path) -> tuple[pathlib.Path, pathlib.Path]:
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker), "train_args": {}}, weights)
    return weights, marker


def test_hostile_weights_are_refused_unexecuted(tmp_path, monkeypatch):
    from medrov.model.build import ModelError
    from medrov.model.detector import Detector

    monkeypatch.delenv(TRUST_ENV, raising=False)
    weights, marker = _evil(tmp_path)
    with pytest.raises(ModelError, match="--trust-weights") as err:
        Detector(weights)
    assert not marker.exists(), "the pickle's payload ran"
    assert "\n" not in str(err.value) and "evil.pt" in str(err.value)


def test_trusting_is_explicit(tmp_path, monkeypatch):
    from medrov.model.build import ModelError
    from medrov.model.weights import load_checkpoint

    weights, marker = _evil(tmp_path)
    monkeypatch.setenv(TRUST_ENV, "1")
    with pytest.raises(ModelError):  # trusted, so it is unpickled (the payload runs) and then is no model
        load_checkpoint(weights)
    assert marker.exists()
    monkeypatch.delenv(TRUST_ENV)


def test_our_checkpoints_load_restricted(tmp_path, monkeypatch):
    from medrov.model.detector import Detector
    from medrov.model.ultra import prepare_ultralytics

    monkeypatch.delenv(TRUST_ENV, raising=False)
    prepare_ultralytics()
    from ultralytics import YOLOWorld
    from ultralytics.nn import tasks

    path = tmp_path / "ours.pt"
    YOLOWorld("yolov8n-worldv2.yaml").save(path)  # the checkpoint layout ultralytics (and our trainer) writes
    detector = Detector(path, threads=1)
    assert tasks.SAFE_LOAD is True and detector.open_vocabulary


def test_evaluate_reads_the_training_size_restricted(tmp_path, monkeypatch):
    from medrov.model.evaluate import _train_imgsz

    monkeypatch.delenv(TRUST_ENV, raising=False)
    weights, marker = _evil(tmp_path)
    assert _train_imgsz(weights) is None
    assert not marker.exists()


@pytest.mark.integration
def test_cli_predict_refuses_in_one_line(tmp_path):
    from PIL import Image

    weights, marker = _evil(tmp_path)
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(image)
    env = {k: v for k, v in os.environ.items() if k != "MEDROV_TRUST_WEIGHTS"}
    command = [
        sys.executable,
        "-m",
        "medrov",
        "predict",
        str(image),
        "-p",
        "liver",
        "--weights",
        str(weights),
        "--out",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--trust-weights" in errors[0]
    assert "Traceback" not in done.stderr and not marker.exists()
