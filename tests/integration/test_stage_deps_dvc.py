"""The DVC graph re-runs what changed: in a temp copy of the project (placeholder data, no stage run), every
medrov/ file a stage imports is edited in turn, and `dvc status` (DVC's own API) must mark exactly the stages
whose command imports it; a params key marks exactly the stages that read it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.stage_deps import stage_deps

pytestmark = pytest.mark.integration


def _changed(repo) -> set[str]:
    """Stage names `dvc status` reports (``dvc.yaml:<stage>``); the repo's state is re-read on every call."""
    return {name.split(":")[-1] for name in repo.status()}


@pytest.fixture
def locked(tmp_path: Path, monkeypatch):
    """A DVC repo with the project's dvc.yaml, params.yaml and code, placeholder outputs, and a dvc.lock made by
    `dvc commit` (so status is clean without running any stage)."""
    from dvc.repo import Repo

    dest = tmp_path / "proj"
    shutil.copytree(ROOT / "medrov", dest / "medrov", ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("dvc.yaml", "params.yaml", "data/sources.yaml"):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    profile = yaml.safe_load((dest / "params.yaml").read_text())["train"]["profile"]
    stages = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():  # every output exists (a folder with one file, or a file)
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = dest / str(next(iter(out)) if isinstance(out, dict) else out).replace("${train.profile}", profile)
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder.txt").write_text("x\n")
    monkeypatch.chdir(dest)  # DVC's API resolves stage paths against the working directory
    repo = Repo.init(str(dest), no_scm=True)
    repo.commit(force=True)
    assert _changed(repo) == set()
    yield dest, repo
    repo.close()


def test_editing_a_file_marks_exactly_the_stages_that_import_it(locked):
    dest, repo = locked
    code = stage_deps.stage_code(dest)
    files = sorted(set().union(*code.values()))
    assert len(files) > 40
    for rel in files:
        path = dest / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        try:
            assert _changed(repo) == {stage for stage, deps in code.items() if rel in deps}, rel
        finally:
            path.write_bytes(original)
    assert _changed(repo) == set()
    # a file no stage imports (the tune driver) changes nothing
    (dest / "medrov" / "tune.py").write_text((dest / "medrov" / "tune.py").read_text() + "\n# edited\n")
    assert _changed(repo) == set()


@pytest.mark.parametrize(
    ("key", "value", "stages"),
    [
        ("pseudo.iou_t", 0.25, {"train"}),
        ("train.profiles.demo.epochs", 7, {"train"}),
        ("train.profiles.paper.epochs", 7, set()),  # another profile than the active one
        ("evaluate.conf", 0.002, {"evaluate", "promote"}),
        ("text.encoder", "minilm", {"train", "evaluate", "promote"}),
        ("data.boxes", "slice", {"convert"}),
        ("data.ct_window", [-1000, 1000], {"convert", "train"}),  # train records it in the checkpoint for predict
        ("data.workers", 1, set()),
        ("tracking.uri", "http://127.0.0.1:5999", {"promote"}),
        ("promote.min_gain", 0.5, {"promote"}),
    ],
)
def test_a_params_key_marks_the_stages_that_read_it(locked, key, value, stages):
    dest, repo = locked
    params = yaml.safe_load((dest / "params.yaml").read_text())
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    assert leaf in node and node[leaf] != value, key
    node[leaf] = value
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _changed(repo) == stages
