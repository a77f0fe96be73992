"""Weights are data: every checkpoint loads with ``torch.load(weights_only=True)`` unless the user trusts it.

A ``.pt`` file is a pickle, and unpickling can run any code the file's author wrote. ultralytics checkpoints
hold pickled model objects (``WorldModel``, its layers), so a plain ``weights_only=True`` load refuses them;
ultralytics (8.4) ships a restricted loader that allows exactly its own and torch's model classes
(``torch.serialization.add_safe_globals`` for the classes a checkpoint references): we switch it on for every
ultralytics load in the process (``YOLO(path)``, ``load_checkpoint``, the trainer's resume), and our own
checkpoints, which are plain ultralytics ones, load that way. Anything else needs an explicit
``--trust-weights`` or ``MEDROV_TRUST_WEIGHTS=1``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medrov.errors import ModelError

TRUST_ENV = "MEDROV_TRUST_WEIGHTS"


def trusted() -> bool:
    """Whether the user said the weights of this process may run code (``MEDROV_TRUST_WEIGHTS``)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def trust_weights(flag: bool) -> None:
    """``--trust-weights``: allow arbitrary pickles in this process and its children (DDP, Ray workers)."""
    if flag:
        os.environ[TRUST_ENV] = "1"  # read by apply_load_policy, i.e. by prepare_ultralytics before any load


def apply_load_policy() -> None:
    """Make every ultralytics checkpoint load of this process restricted (weights_only), unless trusted."""
    from ultralytics.nn import tasks

    from medrov.model.fold import allow_folded_checkpoints

    tasks.SAFE_LOAD = not trusted()
    allow_folded_checkpoints()  # our one layer class of folded models, as safe as ultralytics' own


def _refusal(path: Path, exc: BaseException) -> ModelError:
    detail = str(exc).replace("\n", " ").strip()
    return ModelError(
        f"refused to load: the file holds pickled objects outside the known model classes, and loading it could run "
        f"code ({type(exc).__name__}: {detail[:200]}); pass --trust-weights (or MEDROV_TRUST_WEIGHTS=1) only for a "
        f"file whose origin you trust",
        path,
    )


def _load(path: Path, loader) -> Any:
    """``loader(str(path))`` under the load policy, its failures turned into one :class:`ModelError`."""
    import pickle

    if not path.is_file():
        raise ModelError("weights not found (give a local checkpoint; nothing is downloaded)", path)
    apply_load_policy()
    try:
        return loader(str(path))
    except pickle.UnpicklingError as exc:
        raise _refusal(path, exc) from exc
    except (TypeError, RuntimeError, EOFError, AttributeError, KeyError, ValueError, ModuleNotFoundError) as exc:
        if not trusted() and ("outside the supported" in str(exc) or "Weights only load failed" in str(exc)):
            raise _refusal(path, exc) from exc
        detail = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
        raise ModelError(f"not a loadable ultralytics checkpoint ({detail})", path) from exc


def load_model_and_checkpoint(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """The ``nn.Module`` of an ultralytics checkpoint (FP32, eval) and the checkpoint dict, restricted unless trusted.

    Raises:
        ModelError: the file is missing, not a checkpoint, or refused by the restricted loader.
    """
    from ultralytics.nn.tasks import load_checkpoint as ultra_load

    net, ckpt = _load(Path(path), lambda file: ultra_load(file, device="cpu"))
    return net, ckpt if isinstance(ckpt, dict) else {}


def load_checkpoint(path: str | Path) -> Any:
    """The ``nn.Module`` of an ultralytics checkpoint, loaded restricted unless trusted.

    Raises:
        ModelError: the file is missing, not a checkpoint, or refused by the restricted loader.
    """
    return load_model_and_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict as stored (modules untouched, e.g. still FP16), restricted unless trusted; to rewrite it.

    Raises:
        ModelError: the file is missing, not a checkpoint dict, or refused by the restricted loader.
    """
    from ultralytics.nn.tasks import torch_safe_load

    path = Path(path)
    ckpt, _ = _load(path, torch_safe_load)
    if not isinstance(ckpt, dict):
        raise ModelError(f"not an ultralytics checkpoint (a {type(ckpt).__name__}, not a dict)", path)
    return ckpt


def torch_load(path: str | Path, **kwargs: Any) -> Any:
    """``torch.load`` with ``weights_only=True`` unless trusted (tensors, dicts, lists and numbers only)."""
    import torch

    return torch.load(str(path), map_location=kwargs.pop("map_location", "cpu"), weights_only=not trusted(), **kwargs)
