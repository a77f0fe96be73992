"""On-disk cache of text embeddings keyed by (encoder identity, class names).

A file holds one encoder's embeddings of one ordered list of texts; its name carries a hash of both, so a new
encoder (or new weights under the same spec) never reads another encoder's cache, which is exactly the bug of
ultralytics' stock ``text_embeddings_clip_ViT-B_32.pt`` cache.
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


def encode_cached(encoder: Encoder, texts: Sequence[str], cache_dir: str | Path | None):
    """Embeddings ``(len(texts), dim)`` of ``texts``: read from the cache when this encoder already embedded this
    exact list, else encoded and written (atomically). ``cache_dir=None`` disables the cache.

    Returns:
        (tensor, hit): the embeddings and whether they came from the cache.
    """
    import torch

    texts = list(texts)
    if cache_dir is None:
        return encoder.encode_text(texts), False
    identity = encoder.identity
    path = cache_file(cache_dir, identity, texts)
    if path.is_file():
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if stored.get("identity") == identity and stored.get("texts") == texts:
                log.info("text embeddings: cache hit %s (%d texts, %s)", path.name, len(texts), identity)
                return stored["embeddings"], True
        except Exception as exc:  # a torn or foreign file is rebuilt, never trusted
            log.warning("text embeddings: ignoring unreadable cache %s (%s)", path, exc)
    embeddings = encoder.encode_text(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.partial")
    torch.save({"identity": identity, "texts": texts, "embeddings": embeddings}, tmp)
    os.replace(tmp, path)
    log.info("text embeddings: cached %d texts from %s in %s", len(texts), identity, path.name)
    return embeddings, False
