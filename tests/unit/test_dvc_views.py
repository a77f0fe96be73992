"""The DVC metric files hold headline numbers only, so that ``dvc metrics show`` reads in one terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from medrov import metric_files
from tests.conftest import ROOT

# summaries shaped like the steps' own (the values are long on purpose: a wide float, a multi-digit version)
CONVERT = {
    "converted": 426,
    "quarantined": 12,
    "total": 438,
    "reconverted": 426,
    "reused": 0,
    "images": 66312,
    "boxes": 684201,
    "boxes_repaired": 3,
    "boxes_dropped": 2,
    "orphans_removed": 0,
    "sources": {
        f"Source{i}": {"modality": "ct", "inputs": 6, "images": 87, "boxes": 144, "quarantined": 0} for i in range(35)
    },
}
VALIDATE = {
    "success": False,
    "expectations": 38,
    "passed": 36,
    "failed": 1,
    "warnings": 1,
    "seconds": 2.94,
    "rows_checked": {"manifest": 663, "boxes": 6842},
    "results": [{"table": "manifest"}] * 38,
}
TRAIN = {
    "kind": "open-vocabulary",
    "epochs_done": 20,
    "seconds": 89.9,
    "encoder": {"identity": "minilm:all-MiniLM-L6-v2@451a419aad66"},
    "val": {
        "metrics/precision(B)": 0.0031316137566137566,
        "metrics/recall(B)": 0.13889703725432678,
        "metrics/mAP50(B)": 0.00946664228692467,
        "metrics/mAP50-95(B)": 0.002740159713659524,
    },
}
GROUP = {"map50": 0.123456789, "map50_95": 0.0456789123, "classes": 9}
EVALUATE = {
    "split": "test",
    "weights": "/a/long/path/runs/demo/weights/best.pt",
    "images": 107,
    "all": GROUP,
    "base": GROUP,
    "novel": GROUP,
    "class": {f"class {i}": 0.1 for i in range(157)},
    "modality": {m: {"all": GROUP} for m in ("ct", "mri", "xray")},
    "source": {f"Source{i}": {"all": GROUP} for i in range(35)},
}
PROMOTE = {
    "model": "medrov",
    "version": "123",
    "run_id": "ef6a795e44d04e9a8d0680dfcaa1e31a",
    "decision": "already champion",
    "promoted": False,
    "reason": "a long sentence " * 5,
    "gain": 0.0012,
    "challenger": {
        "split": "val",
        "metric": "map50",
        "all": 0.123456789,
        "base": 0.123456789,
        "novel": 0.0,
        "modality": {m: 0.1 for m in ("ct", "mri", "xray", "endoscopy", "microscopy")},
    },
    "champion": {"split": "val", "metric": "map50", "all": 0.1, "base": 0.1, "novel": 0.0, "modality": {"ct": 0.1}},
    "previous_champion_version": "122",
}


def test_headlines_are_flat_numbers_and_short_words():
    heads = {
        "convert": metric_files.convert(CONVERT),
        "validate": metric_files.validate(VALIDATE),
        "train": metric_files.train(TRAIN),
        "evaluate": metric_files.evaluate(EVALUATE),
        "promote": metric_files.promote(PROMOTE),
    }
    assert heads["convert"] == {"images": 66312, "boxes": 684201, "quarantined": 12}
    assert heads["validate"] == {"success": False}
    assert heads["train"] == {"epochs": 20, "val_map50": 0.0095}
    assert heads["evaluate"] == {"map50": 0.1235, "map50_95": 0.0457, "base": 0.1235, "novel": 0.1235}
    assert heads["promote"] == {"version": "123", "decision": "already champion"}
    for head in heads.values():
        assert all(not isinstance(v, (dict, list)) for v in head.values()), head
    # no key in two files: `dvc exp show` would head such a column with its file path
    keys = [k for head in heads.values() for k in head]
    assert len(keys) == len(set(keys)), keys


def test_dvc_metrics_show_fits_in_160_columns(tmp_path):
    """The project's own dvc.yaml and params.yaml, with metric files written from full-size summaries: the table
    `dvc metrics show` prints keeps within 160 columns and still carries every file's headline."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "400"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    written = {
        "convert": metric_files.convert(CONVERT),
        "validate": metric_files.validate(VALIDATE),
        "train": metric_files.train(TRAIN),
        "eval": metric_files.evaluate(EVALUATE),
        "promote": metric_files.promote(PROMOTE),
    }
    for name, data in written.items():
        metric_files.write(tmp_path / "metrics" / f"{name}.json", data)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "metrics", "show"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip("\n").splitlines()
    assert len(lines) == 1 + len(written), proc.stdout  # one header, one row per metric file
    widest = max(len(line.rstrip()) for line in lines)
    assert widest <= metric_files.WIDTH, f"{widest} columns:\n{proc.stdout}"
    header = lines[0].split()
    for data in written.values():
        assert set(data) <= set(header), (data, header)
    assert json.loads((tmp_path / "metrics" / "eval.json").read_text())["map50"] == 0.1235


def test_dvc_plots_show_has_the_training_curves_as_an_image(tmp_path):
    """`dvc plots show` on the project's dvc.yaml renders the training curves as a PNG too (the interactive chart
    needs its library from a CDN), next to the evaluation PNGs."""
    from PIL import Image

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "results.csv").write_text("epoch,metrics/mAP50(B),metrics/mAP50-95(B)\n1,0.1,0.05\n2,0.2,0.1\n")
    (tmp_path / "reports" / "eval").mkdir(parents=True)
    for png in (run / "results.png", tmp_path / "reports" / "eval" / "pr_curve.png"):
        Image.new("RGB", (8, 8), "white").save(png)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "-o", "out"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "out" / "index.html").read_text()
    assert "runs/demo/results.png" in html and "pr_curve.png" in html
    assert "metrics/mAP50(B)" in html  # the interactive chart is still there for online use
