"""A real DVC repo: `dvc repro` runs demo_sources -> convert -> validate/report -> train -> evaluate -> promote (the
model ends up `champion` in the embedded MLflow store), a second repro is a no-op, one param re-runs one stage and
what depends on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

PROJECT_FILES = ["medrov", "params.yaml", "dvc.yaml", "data/sources.yaml", ".dvc/config", ".dvcignore", "pyproject.toml"]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the project as a fresh git + DVC repo, with the demo shrunk and no shared data."""
    dest = tmp_path / "proj"
    for rel in PROJECT_FILES:
        src = ROOT / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["demo"].update(ct_volumes=2, mri_volumes=2, xray_images=4, microscopy_images=4, endoscopy_images=4)
    params["text"]["encoder"] = "minilm"
    params["train"]["profiles"]["demo"].update(epochs=1, imgsz=64, batch=8, workers=0)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MEDROV_SHARED_DATA": str(tmp_path / "no-shared-data"),
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MEDROV_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own default: sqlite:///<project>/mlflow.db
    _run(["git", "init", "-q"], dest, env)
    return dest, env


def test_repro_runs_then_is_a_noop_then_reruns_only_convert(project):
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], dest, env)
    assert "Running stage 'demo_sources'" in first.stdout and "Running stage 'convert'" in first.stdout
    metrics = json.loads((dest / "metrics" / "convert.json").read_text())
    assert metrics["converted"] == metrics["total"] == 2 + 2 + 2 + 4 + 4 + 4
    assert metrics["quarantined"] == 0
    assert (dest / "data" / "omnis" / "manifest.parquet").is_file()
    assert set(metrics["sources"]) == {"SynthAbdomenCT", "SynthKidneyCT", "SynthAbdomenMRI", "SynthChestXray", "SynthBloodSmear", "SynthPolyp"}
    assert "Running stage 'train'" in first.stdout and "Running stage 'evaluate'" in first.stdout
    assert (dest / "runs" / "demo" / "weights" / "best.pt").is_file()
    train = json.loads((dest / "metrics" / "train.json").read_text())
    assert train["kind"] == "open-vocabulary" and train["encoder"].startswith("minilm:")
    evaluation = json.loads((dest / "metrics" / "eval.json").read_text())
    assert {"all", "base", "novel", "modality", "source"} <= set(evaluation)
    assert evaluation["modality"] and set(evaluation["modality"]) <= {"ct", "mri", "xray", "microscopy", "endoscopy"}
    assert (dest / "reports" / "eval" / "pr_curve.png").is_file()
    assert (dest / "reports" / "eval" / "map50_per_modality.png").is_file()
    # promote: the first model of the registry becomes champion, in the embedded store inside the project
    assert "Running stage 'promote'" in first.stdout
    promoted = json.loads((dest / "metrics" / "promote.json").read_text())
    assert promoted["decision"] == "first" and promoted["promoted"] and promoted["challenger"]["split"] == "val"
    assert (dest / "mlflow.db").is_file() and any((dest / "mlartifacts").rglob("best.pt"))
    listing = _run([sys.executable, "-m", "medrov", "models"], dest, env).stdout
    assert f"sqlite:///{dest / 'mlflow.db'}" in listing.splitlines()[0]
    assert any(line.split()[:2] == ["1", "challenger,champion"] for line in listing.splitlines()[2:]), listing

    second = _run([*dvc, "repro"], dest, env)
    assert "Data and pipelines are up to date" in second.stdout
    assert "Running stage" not in second.stdout

    _run([*dvc, "push", "-q"], dest, env)
    assert any((dest / ".dvc-storage").rglob("*")), "the local DVC remote received nothing"

    # a param that only convert reads re-runs convert alone; a param no stage lists re-runs nothing
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["workers"] = 1
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage" not in _run([*dvc, "repro"], dest, env).stdout
    params["data"]["boxes"] = "slice"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*dvc, "repro"], dest, env).stdout
    assert "Running stage 'convert'" in third and "Running stage 'demo_sources'" not in third
    # an evaluation-only param re-runs evaluate and not train
    params["evaluate"]["conf"] = 0.01
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = _run([*dvc, "repro"], dest, env).stdout
    assert "Running stage 'evaluate'" in fourth and "Running stage 'train'" not in fourth
