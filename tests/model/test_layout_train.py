"""The shards layout end to end: convert -> shards -> (a fresh clone: shards only) -> train and evaluate a tiny
model, which read the images materialised from the shards; the tracked folder keeps tables and shards only."""

from __future__ import annotations

import shutil
from pathlib import Path

from medrov.config import load_params
from medrov.data import convert, layout
from tests.conftest import ROOT


def test_convert_shard_materialise_train_evaluate(tiny_omnis, train_overrides, tmp_path):
    from medrov.model.evaluate import evaluate
    from medrov.model.train import train

    root = tiny_omnis.parent  # <tmp>/data: raw/synthetic and sources.yaml of the tiny demo
    sharded = tmp_path / "omnis"
    params = load_params(ROOT / "params.yaml", ["data.workers=1", "data.layout=shards"])
    summary = convert.run(params.data, sources_file=root / "sources.yaml", out_dir=sharded, progress=False)
    assert summary["layout"]["shards"] > 0 and summary["images"] > 0
    shutil.rmtree(layout.files_dir(sharded))  # what `dvc pull` gives another machine: the tracked folder only
    tracked_before = sorted(p.relative_to(sharded).as_posix() for p in sharded.rglob("*"))

    overrides = [o for o in train_overrides if not o.startswith("train.data=")] + [
        f"train.data={sharded / 'omnis.yaml'}"
    ]
    params = load_params(ROOT / "params.yaml", overrides)
    info = train(params)
    assert Path(info["weights"]).is_file() and info["epochs_done"] == 1
    work = layout.files_dir(sharded)
    assert (work / "images").is_dir() and any((work / "labels").glob("*.cache")), "ultralytics read the shards' files"
    result = evaluate(Path(info["weights"]), params, split="train")
    assert len(result["class"]) > 0
    # training and evaluation wrote nothing into the DVC-tracked folder (label caches go to the work folder)
    assert sorted(p.relative_to(sharded).as_posix() for p in sharded.rglob("*")) == tracked_before
