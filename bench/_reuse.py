"""Benches that train several arms go on where an interrupted run stopped: an arm trained with exactly the same
settings is reused, not trained again."""

from __future__ import annotations

import json
from pathlib import Path


def finished(params, closed_set: bool = False) -> dict | None:
    """The summary (``medrov.json``) of a finished training of exactly these train args and settings, else None."""
    from medrov.model.train import RUN_INFO, recorded_settings, run_dir, train_args

    record = run_dir(params, None, closed_set) / RUN_INFO
    if not record.is_file():
        return None
    info = json.loads(record.read_text())
    same = info.get("args") == json.loads(json.dumps(train_args(params, closed_set=closed_set)))
    same = same and info.get("params") == json.loads(json.dumps(recorded_settings(params)))
    done = info.get("epochs_done") == params.train.profiles[params.train.profile].epochs and "weights" in info
    return info if same and done and Path(info["weights"]).is_file() else None
