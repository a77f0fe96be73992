"""Provenance of a run: the git commit, the DVC hash of the Omnis data and its presence matrix, the text encoder."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import yaml

from medrov import paths
from medrov.config import Params

TAG = "medrov."  # prefix of every tag medrov sets on runs and model versions


def git_commit(root: Path | None = None) -> tuple[str, bool | None]:
    """(commit, dirty) of the project checkout, else of the checkout the medrov code runs from;
    ``("none", None)`` when neither is a git repository with a commit."""
    for where in dict.fromkeys([root or paths.project_root(), paths.PACKAGE_DIR.parent]):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
            if commit.returncode != 0:
                continue
            status = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=where,
                capture_output=True,
                text=True,
                timeout=30,
            )
            return commit.stdout.strip(), bool(status.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            continue
    return "none", None


def md5_file(path: Path) -> str:
    """The md5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_hash(path: Path, root: Path | None = None) -> str | None:
    """The md5 DVC recorded in ``dvc.lock`` for an output at ``path`` (a directory hash ends in ``.dir``)."""
    root = root or paths.project_root()
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError:
        return None
    target = path.resolve()
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if (root / out.get("path", "")).resolve() == target and out.get("md5"):
                return str(out["md5"])
    return None


def data_dir(params: Params) -> Path:
    """The Omnis folder the params train on (the folder of ``train.data``)."""
    return paths.resolve(params.train.data).parent


def data_tags(params: Params) -> dict[str, str]:
    """Which data: the DVC hash of the Omnis folder (from dvc.lock) and the md5 of its presence matrix."""
    folder = data_dir(params)
    presence = folder / "presence.csv"
    return {
        f"{TAG}data.dir": str(folder),
        f"{TAG}data.omnis_dvc_md5": dvc_hash(folder) or "not in dvc.lock",
        f"{TAG}data.presence_md5": md5_file(presence) if presence.is_file() else "no presence.csv",
    }


def run_tags(params: Params, step: str) -> dict[str, str]:
    """The tags every step run carries: its step, the git commit (and whether the checkout is dirty), the data."""
    commit, dirty = git_commit()
    tags = {
        f"{TAG}step": step,
        f"{TAG}git_commit": commit if commit != "none" else "none (not a git checkout)",
        f"{TAG}git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        **data_tags(params),
    }
    if commit != "none":
        tags["mlflow.source.git.commit"] = commit
    return tags


def encoder_tags(encoder: dict[str, Any] | None, params: Params) -> dict[str, str]:
    """The text encoder actually used (``describe()`` of a prompter), and whether it was the fallback."""
    if not encoder:
        return {f"{TAG}encoder": "none (closed-set model)"}
    configured = params.text.encoder
    spec = str(encoder.get("spec", ""))
    fallback = not (
        spec == configured or spec.endswith(configured) or (configured == "biomedclip" and "BiomedCLIP" in spec)
    )
    return {
        f"{TAG}encoder": str(encoder.get("identity")),
        f"{TAG}encoder.spec": spec,
        f"{TAG}encoder.dim": str(encoder.get("dim")),
        f"{TAG}encoder.fallback_used": str(fallback).lower(),
    }
