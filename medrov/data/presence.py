"""The dataset-class presence matrix M[source, class]: 1 annotated, 0 may be present but unannotated, -1 cannot exist."""

from __future__ import annotations

import pandas as pd

from medrov.catalog import Vocabulary
from medrov.data.sources import ResolvedSource
from medrov.errors import ConfigError

ANNOTATED, UNANNOTATED, ABSENT = 1, 0, -1


def presence_row(source: ResolvedSource, vocab: Vocabulary) -> dict[str, int]:
    """One source's row.

    A catalogue source starts from the paper's row; a new source is derived: classes it annotates are 1,
    classes that can appear in its modality are 0, the rest -1. Per-source overrides from the sources file
    come next, and classes the source annotates are always 1 (an override saying otherwise is an error).
    """
    annotated = {name for name in source.class_map.values() if name is not None}
    if source.catalog_presence is not None:
        row = {c.name: ABSENT for c in vocab.classes}
        for name, value in source.catalog_presence.items():
            cls = vocab.lookup(name)
            if cls is None:
                raise ConfigError(f"catalogue row {source.name} names unknown class {name!r}")
            row[cls.name] = value
    else:
        row = {c.name: (UNANNOTATED if source.modality in c.modalities else ABSENT) for c in vocab.classes}
    for name, value in source.spec.presence.items():
        cls = vocab[name]
        if cls.name in annotated and value != ANNOTATED:
            raise ConfigError(f"source {source.name}: presence override sets annotated class {cls.name!r} to {value}")
        row[cls.name] = value
    for name in annotated:
        row[name] = ANNOTATED
    return row


def presence_matrix(sources: list[ResolvedSource], vocab: Vocabulary) -> pd.DataFrame:
    """M over the given sources (rows, in order) and the whole vocabulary (columns, in vocabulary order)."""
    frame = pd.DataFrame(
        [presence_row(s, vocab) for s in sources], index=[s.name for s in sources], columns=vocab.names, dtype="int8"
    )
    frame.index.name = "source"
    return frame
