"""On-disk cache of text embeddings keyed by (encoder identity, class names).

A file holds one encoder's embeddings of one ordered list of texts; its name carries a hash of both, so a new
encoder (or new weights under the same spec) never reads another encoder's cache, which is exactly the bug of
ultralytics' stock ``text_embeddings_clip_ViT-B_32.pt`` cache. A list that was never embedded whole, but whose
texts all are in this encoder's cached lists (a per-source vocabulary after a training embedded every name), is
put together from those rows and stored as its own entry, so the encoder model is not loaded for it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Sequence

from medrov.text.encoders import Encoder

log = logging.getLogger(__name__)


def cache_key(identity: str, texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps([identity, list(texts)]).encode()).hexdigest()[:20]


def cache_file(cache_dir: str | Path, identity: str, texts: Sequence[str]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", identity.split("@")[0])[-40:].strip("_")
    return Path(cache_dir) / f"text-{slug}-{cache_key(identity, texts)}.pt"


def _read(path: Path, identity: str) -> dict | None:
    """A cache file's content when it is this encoder's, else None (a torn or foreign file is never trusted)."""
    import torch

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("text embeddings: ignoring unreadable cache %s (%s)", path, exc)
        return None
    return stored if isinstance(stored, dict) and stored.get("identity") == identity else None


def _from_rows(cache_dir: Path, identity: str, texts: list[str]):
    """``texts`` assembled from the rows of this encoder's cached lists (newest first), or None if one is missing."""
    import torch

    wanted, rows = set(texts), {}
    pattern = cache_file(cache_dir, identity, []).name.rsplit("-", 1)[0] + "-*.pt"
    for path in sorted(Path(cache_dir).glob(pattern), key=lambda f: f.stat().st_mtime, reverse=True):
        stored = _read(path, identity)
        if stored is None:
            continue
        for text, row in zip(stored["texts"], stored["embeddings"]):
            if text in wanted and text not in rows:
                rows[text] = row
        if len(rows) == len(wanted):
            return torch.stack([rows[t] for t in texts])
    return None


def _write(path: Path, identity: str, texts: list[str], embeddings) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    torch.save({"identity": identity, "texts": texts, "embeddings": embeddings}, tmp)
    os.replace(tmp, path)


def encode_cached(encoder: Encoder, texts: Sequence[str], cache_dir: str | Path | None):
    """Embeddings ``(len(texts), dim)`` of ``texts``: read from the cache when this encoder already embedded this
    exact list, else put together from its cached rows when they hold every text, else encoded; a new list is
    written (atomically) as its own entry. ``cache_dir=None`` disables the cache.

    Returns:
        (tensor, hit): the embeddings and whether they came from the cache (no encoder call).
    """
    texts = list(texts)
    if cache_dir is None:
        return encoder.encode_text(texts), False
    identity = encoder.identity
    path = cache_file(cache_dir, identity, texts)
    if path.is_file():
        stored = _read(path, identity)
        if stored is not None and stored.get("texts") == texts:
            log.info("text embeddings: cache hit %s (%d texts, %s)", path.name, len(texts), identity)
            return stored["embeddings"], True
    if texts and Path(cache_dir).is_dir():
        embeddings = _from_rows(Path(cache_dir), identity, texts)
        if embeddings is not None:
            _write(path, identity, texts, embeddings)
            log.info(
                "text embeddings: %d texts put together from cached rows of %s, stored as %s",
                len(texts),
                identity,
                path.name,
            )
            return embeddings, True
    embeddings = encoder.encode_text(texts)
    _write(path, identity, texts, embeddings)
    log.info("text embeddings: cached %d texts from %s in %s", len(texts), identity, path.name)
    return embeddings, False
