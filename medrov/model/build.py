"""YOLO-World (worldv2) models with text embeddings from our encoders instead of CLIP.

Text dimension: every YOLO-World checkpoint expects 512-d prompts (BioMedCLIP and CLIP are 512-d). Encoders of
another width are mapped to 512 by a *fixed* isometric projection (:func:`fit_text_dim`): zero-padding for
narrower encoders (MiniLM, 384-d), a seeded orthonormal projection for wider ones. We chose this over changing the
head's text width because (a) models stay plain ``ultralytics`` ``WorldModel`` objects, so checkpoints load,
validate and export with stock ultralytics and survive DDP pickling unchanged, (b) pretrained worldv2 weights load
in full, and (c) the projection has no parameters to train and keeps cosine similarities of the encoder exactly
(zero-padding) or nearly (orthonormal rows).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from medrov.errors import ModelError  # noqa: F401  (re-exported for callers of the model layer)
from medrov.prompts import prompt_name, prompt_names  # noqa: F401  (re-exported: the model code's names)

log = logging.getLogger(__name__)

TEXT_DIM = 512
SCALES = ("n", "s", "m", "l", "x")


def fit_text_dim(embeddings, dim: int = TEXT_DIM):
    """Map ``(n, d)`` L2-normalised embeddings to ``(n, dim)`` with a fixed isometry (see the module docstring)."""
    import torch

    n, d = embeddings.shape
    if d == dim:
        return embeddings
    if d < dim:
        return torch.nn.functional.pad(embeddings, (0, dim - d))
    gen = torch.Generator().manual_seed(d * 1000 + dim)
    q, _ = torch.linalg.qr(torch.randn(d, dim, generator=gen))  # (d, dim) with orthonormal columns
    out = embeddings @ q
    return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def model_source(scale_or_path: str) -> str:
    """``n``/``s``/``m``/``l``/``x`` -> the ultralytics worldv2 yaml of that scale; anything else is a yaml or
    checkpoint path (or name) passed through."""
    key = str(scale_or_path).strip()
    if key.lower() in SCALES:
        return f"yolov8{key.lower()}-worldv2.yaml"
    return key


def build_world(model: str = "n", nc: int = 80, verbose: bool = False):
    """A ``WorldModel`` from a scale letter, an ultralytics yaml, or a local checkpoint (weights loaded).

    Raises:
        ModelError: a checkpoint path that does not exist (names like ``yolov8l-worldv2.pt`` would be downloaded
            by ultralytics; we refuse instead, offline).
    """
    from ultralytics.nn.tasks import WorldModel

    from medrov.model.weights import load_checkpoint

    src = model_source(model)
    if src.endswith((".yaml", ".yml")):
        return WorldModel(src, ch=3, nc=nc, verbose=verbose)
    path = Path(src)
    if not path.is_file():
        raise ModelError(f"{src}: checkpoint not found (give a local path; nothing is downloaded)")
    loaded = load_checkpoint(path)
    if type(loaded).__name__ != "WorldModel":
        raise ModelError(f"{src}: not a YOLO-World checkpoint ({type(loaded).__name__})")
    return loaded


def set_prompts(model, names: Sequence[str], embeddings) -> None:
    """Give a ``WorldModel`` (or a ``YOLOWorld``/``YOLO`` wrapper) a fixed vocabulary from precomputed embeddings.

    This is what ``set_classes`` does, without building CLIP: ``txt_feats`` (1, N, 512), the head's ``nc`` and the
    class names.
    """
    from ultralytics.engine.model import Model

    net = model.model if isinstance(model, Model) else model
    if not hasattr(net, "txt_feats") or not hasattr(net, "model"):
        raise ModelError(f"{type(model).__name__} is not a YOLO-World model")
    emb = fit_text_dim(embeddings).float()
    if emb.shape[0] != len(names):
        raise ModelError(f"{len(names)} names but {emb.shape[0]} embeddings")
    device = next(net.parameters()).device
    net.txt_feats = emb.reshape(1, len(names), -1).to(device)
    net.model[-1].nc = len(names)
    net.names = dict(enumerate(names))
    predictor = getattr(model, "predictor", None)
    if predictor is not None and getattr(predictor, "model", None) is not None:
        predictor.model.names = net.names


class Prompter:
    """Names -> 512-d prompt embeddings through one encoder and the on-disk cache."""

    def __init__(self, encoder, cache_dir: str | Path | None):
        self.encoder, self.cache_dir = encoder, cache_dir

    def __call__(self, texts: Sequence[str]):
        from medrov.text import encode_cached

        emb, _ = encode_cached(self.encoder, list(texts), self.cache_dir)
        return fit_text_dim(emb)

    def describe(self) -> dict[str, Any]:
        return self.encoder.describe()
