"""The ``train`` step: YOLO-World with our text encoder (or the closed-set YOLOv8 baseline) on Omnis."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from medrov import paths
from medrov.config import Params, TrainProfile, flatten
from medrov.data import layout
from medrov.errors import ConfigError
from medrov.model.build import SCALES, ModelError, model_source
from medrov.model.record import training_record, write_record
from medrov.prompts import SYNONYM_SEPARATOR

log = logging.getLogger(__name__)
RUN_INFO = "medrov.json"


def run_dir(params: Params, profile: str | None = None, closed_set: bool = False) -> Path:
    name = profile or params.train.profile
    return paths.project_root() / params.train.project / (f"{name}-closed" if closed_set else name)


def _resolve(path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else paths.project_root() / p


def _closed_set_model(prof: TrainProfile) -> str:
    if prof.closed_set_model:
        return prof.closed_set_model
    key = prof.model.strip().lower()
    if key in SCALES:
        return f"yolov8{key}.yaml"
    raise ConfigError(f"train profile: set closed_set_model for the closed-set baseline of {prof.model!r}")


def _model_arg(model: str) -> str:
    src = model_source(model)
    if src.endswith((".yaml", ".yml")):
        return src
    path = _resolve(src)
    if not path.is_file():
        raise ModelError(f"{src}: checkpoint not found (give a local path; nothing is downloaded)")
    return str(path)


def train_args(params: Params, profile: str | None = None, closed_set: bool = False) -> dict[str, Any]:
    """The ultralytics train arguments of a profile (absolute paths: Ray trials and DDP workers change cwd)."""
    name = profile or params.train.profile
    if name not in params.train.profiles:
        raise ConfigError(f"train profile {name!r} is not one of {sorted(params.train.profiles)}")
    prof = params.train.profiles[name]
    data = _resolve(params.train.data)
    if not data.is_file():
        raise ConfigError(f"{data}: dataset file not found (run `medrov convert` first)")
    data = layout.readable_file(data)  # a sharded dataset trains on its extracted per-image folder
    out = run_dir(params, name, closed_set)
    args = {
        "model": _closed_set_model(prof) if closed_set else _model_arg(prof.model),
        "data": str(data),
        "epochs": prof.epochs,
        "imgsz": prof.imgsz,
        "batch": prof.batch,
        "device": prof.device,
        "workers": prof.workers,
        "optimizer": prof.optimizer,
        "lr0": prof.lr0,
        "weight_decay": prof.weight_decay,
        "patience": prof.patience,
        "seed": prof.seed,
        "project": str(out.parent),
        "name": out.name,
        "exist_ok": True,
        **prof.extra,
    }
    return args


def _check_device(device: str, where: str) -> None:
    """``cpu``, ``mps``, ``cuda[:N]``, ``N`` or ``N,M,...`` naming devices this machine has."""
    import torch

    text = str(device).strip().lower()
    if text in ("", "cpu"):
        return
    if text == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{where}={device!r}: MPS is not available on this machine")
        return
    ids = text.removeprefix("cuda:").removeprefix("cuda").strip(",") or "0"
    try:
        wanted = [int(i) for i in ids.split(",")]
    except ValueError:
        raise ConfigError(f"{where}={device!r}: not a device (cpu, mps, cuda:N, N or N,M,...)") from None
    have = torch.cuda.device_count()
    missing = [i for i in wanted if i >= have or i < -1]
    if missing:
        raise ConfigError(f"{where}={device!r}: no CUDA device {missing[0]} (this machine has {have})")


def check_train_args(params: Params, profile: str | None = None, closed_set: bool = False) -> dict[str, Any]:
    """The train arguments, checked as ultralytics will check them, before any run is created.

    Raises:
        ConfigError: unknown profile or dataset, a device this machine lacks, an ``extra`` key ultralytics does
            not know or a value of the wrong type; one line naming the params key.
    """
    args = train_args(params, profile, closed_set)
    data = yaml.safe_load(Path(args["data"]).read_text())
    val_data_file(params, data)
    known = {s.strip() for n in (data.get("names") or {}).values() for s in str(n).split(SYNONYM_SEPARATOR)}
    unknown = sorted(set(params.pseudo.conf_c_class) - known)
    if unknown:
        raise ConfigError(f"pseudo.conf_c_class: {unknown} are not classes of the training data")
    name = profile or params.train.profile
    prefix = f"train.profiles.{name}"
    _check_device(args["device"], f"{prefix}.device")
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT, get_cfg

    unknown = sorted(set(params.train.profiles[name].extra) - set(DEFAULT_CFG_DICT))
    if unknown:
        raise ConfigError(f"{prefix}.extra: {', '.join(map(repr, unknown))} not an ultralytics train argument")
    try:
        get_cfg(overrides={k: v for k, v in args.items() if k != "model"})
    except (SyntaxError, TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}: {str(exc).strip().splitlines()[0]}") from None
    return args


def _trainer_class(params: Params, data_file: str, closed_set: bool):
    from medrov.model.trainer import make_detection_trainer, make_world_trainer

    data = yaml.safe_load(Path(data_file).read_text())
    held_out = [int(c) for c in data.get("novel", [])]
    val_data = val_data_file(params, data)
    if closed_set:
        return make_detection_trainer(held_out, val_data)
    cache = None if params.text.cache_dir is None else str(_resolve(params.text.cache_dir))
    pseudo = {**params.pseudo.model_dump(), "seed": params.train.active.seed}
    return make_world_trainer(params.text.encoder, params.text.fallback, cache, held_out, pseudo, val_data)


def val_data_file(params: Params, data: dict[str, Any]) -> str | None:
    """``train.val_data`` resolved and checked against the training data's classes (None when unset).

    Raises:
        ConfigError: the file is missing, has no val split, or names other classes.
    """
    if not params.train.val_data:
        return None
    path = _resolve(params.train.val_data)
    if not path.is_file():
        raise ConfigError(f"train.val_data: {path}: dataset file not found")
    path = layout.readable_file(path)
    other = yaml.safe_load(Path(path).read_text()) or {}
    if not other.get("val"):
        raise ConfigError(f"train.val_data: {path}: has no val split")
    ours, theirs = dict(data.get("names") or {}), dict(other.get("names") or {})
    if ours != theirs:
        diff = sorted(set(ours.items()) ^ set(theirs.items()))[:3]
        raise ConfigError(f"train.val_data: {path}: its classes differ from the training data's (e.g. {diff})")
    return str(path)


def recorded_settings(params: Params) -> dict[str, Any]:
    """The flattened ``text``, ``train`` and ``pseudo`` settings a run summary (``medrov.json``) records."""
    return {k: v for k, v in flatten(params).items() if k.split(".")[0] in ("text", "train", "pseudo")}


def train(
    params: Params,
    profile: str | None = None,
    closed_set: bool = False,
    resume: bool = False,
    callbacks: dict[str, list] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a profile; returns the run summary also written to ``<run>/medrov.json``.

    Raises:
        ConfigError: unknown profile, missing dataset, ``--resume`` without an interrupted run.
    """
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    out = run_dir(params, profile, closed_set)
    last = out / "weights" / "last.pt"
    if resume:
        if not last.is_file():
            raise ConfigError(f"{last}: nothing to resume (no interrupted run of this profile)")
        info = json.loads((out / RUN_INFO).read_text())
        overrides = {"resume": str(last)}
        data_file = info["args"]["data"]
    else:
        args = check_train_args(params, profile, closed_set)
        overrides, data_file = args, args["data"]
        info = {
            "kind": "closed-set" if closed_set else "open-vocabulary",
            "profile": profile or params.train.profile,
            "args": args,
            "params": recorded_settings(params),
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_INFO).write_text(json.dumps(info, indent=2))
    cls = _trainer_class(params, data_file, closed_set or info["kind"] == "closed-set")
    trainer = cls(overrides=overrides)
    for event, funcs in (callbacks or {}).items():
        for func in funcs:
            trainer.add_callback(event, func)
    start = time.time()
    trainer.train()
    metrics = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    info.update(
        {
            "weights": str(trainer.best if Path(trainer.best).is_file() else trainer.last),
            "save_dir": str(trainer.save_dir),
            "epochs_done": int(trainer.epoch) + 1,
            "seconds": round(time.time() - start, 1),
            "val": metrics,
        }
    )
    if not closed_set and info["kind"] != "closed-set":
        info["encoder"] = trainer.prompter.describe()
        info["pseudo"] = (
            trainer._mechanisms.describe() if trainer._mechanisms is not None else {"labels": False, "negatives": False}
        )
    record = training_record(params, info.get("encoder"))
    info["normalisation"] = record["normalisation"]
    for weights in {Path(info["weights"]), Path(trainer.last)}:
        if weights.is_file():  # inside the checkpoint: predict reads it wherever the file is copied or logged
            write_record(weights, record)
    (out / RUN_INFO).write_text(json.dumps(info, indent=2))
    log.info("train: %s -> %s (%s)", info["kind"], info["weights"], info.get("encoder", {}).get("identity", "no text"))
    return info
