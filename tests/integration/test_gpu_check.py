"""bench/gpu_check.sh --dry-run: the prepared GPU check runs end to end on the CPU at tiny sizes, so it cannot rot
while no GPU machine is at hand (issue 20)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"),
        "MEDROV_GPU_WHEELS": str(tmp_path / "none"),
        "PYTHON": sys.executable,
    }  # the venv need not be on PATH (make test runs .venv/bin/python)
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=420,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] is True and result["env"]["device"] == "cpu"
    fps = result["fps"]["n"]
    assert "error" not in fps, fps
    for runtime in ("pytorch_fp32_cpu", "onnxruntime"):
        assert set(fps[runtime]) >= {"unfolded", "folded", "yolov8"}, fps[runtime]
        assert all(fps[runtime][m]["fps"] > 0 for m in ("unfolded", "folded", "yolov8"))
    assert fps["tensorrt"] == {"skipped": "no CUDA device"}
    train = result["train"]
    assert "error" not in train, train
    assert train["with_mechanisms"]["steps"] == train["without"]["steps"] == 3
    assert train["with_mechanisms"]["mechanisms"]["labels"] is True and train["without"]["mechanisms"] is None
    assert train["teacher_overhead_ratio"] > 0
    parity = train["with_mechanisms"]["fold_parity"]  # the trained model folded with the dataset's classes
    assert parity["images"] >= 4 and parity["classes"] >= 5
    assert parity["box_max_px"] < 1e-3 and parity["score_max"] < 1e-4
    ddp = result["ddp"]
    assert "error" not in ddp, ddp
    assert ddp["rc"] == 0 and ddp["world_size"] == 1 and ddp["trainer_class"] == "MedrovWorldRunTrainer"
    assert "last.pt" in ddp["weights"]
    table = (out / "gpu_check.md").read_text()
    assert "| n | onnxruntime |" in table and "teacher overhead" in table
    assert "fold parity" in table and "world size 1, rc 0" in table


def test_gpu_check_refuses_without_cuda_unless_dry_run(tmp_path):
    """Without --dry-run on a machine with no GPU it says so and exits 2 (no silent CPU 'GPU figures')."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    env = {
        **os.environ,
        "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics"),
        "MEDROV_GPU_WHEELS": str(tmp_path / "none"),
        "PYTHON": sys.executable,
    }  # the venv need not be on PATH (make test runs .venv/bin/python)
    run = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert run.returncode == 2 and "no CUDA device" in run.stderr
    assert not (tmp_path / "o" / "gpu_check.json").exists()
