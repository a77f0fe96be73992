"""Patient/volume-level splits that are stable across runs and independent of what else is converted."""

from __future__ import annotations

import hashlib

from medrov.config import SplitParams

SPLITS = ("train", "val", "test")


def split_of(source: str, group: str, params: SplitParams) -> str:
    """The split of a patient/volume group: a hash of (seed, source, group) against the fractions.

    Adding or removing other inputs never moves a group, and every slice of a volume shares its split.
    """
    digest = hashlib.sha256(f"{params.seed}\x00{source}\x00{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < params.train:
        return "train"
    if u < params.train + params.val:
        return "val"
    return "test"
