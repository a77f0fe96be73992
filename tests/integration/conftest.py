"""A temp copy of the project as a fresh git + DVC repo with the demo shrunk (DVC and Prefect tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

PROJECT_FILES = [
    "medrov",
    "flows",
    "params.yaml",
    "dvc.yaml",
    "prefect.yaml",
    "data/sources.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
    "pyproject.toml",
]


def run_ok(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command; fail the test with its output when it exits non-zero."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def copy_project(dest: Path, no_shared: Path) -> dict[str, str]:
    """Copy the project into ``dest`` (git repo, shrunk demo, MiniLM, 1 epoch at 64 px); returns the env to run it."""
    for rel in PROJECT_FILES:
        src, target = ROOT / rel, dest / rel
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
        "MEDROV_SHARED_DATA": str(no_shared),
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MEDROV_ROOT", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own default: sqlite:///<project>/mlflow.db
    run_ok(["git", "init", "-q"], dest, env)
    return env
