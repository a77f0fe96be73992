"""The dataset-class presence matrix M[source, class]: 1 annotated, 0 may be present but unannotated, -1 cannot
exist. Written by conversion, read here once for training, the mechanisms and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medrov.catalog import Vocabulary
from medrov.data.sources import ResolvedSource
from medrov.errors import ConfigError
from medrov.prompts import prompt_name

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


def read_presence(path: str | Path) -> pd.DataFrame:
    """``presence.csv`` as written by :func:`presence_matrix`: sources (index) x classes, ints 1 / 0 / -1.

    Raises:
        ConfigError: the file is missing, unreadable, or holds another value than 1, 0, -1.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, index_col=0)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the presence matrix ({type(exc).__name__}: {exc})", path) from None
    table.index = table.index.astype(str)
    table.columns = [str(c).strip() for c in table.columns]
    values = table.to_numpy()
    if values.size and not pd.Series(values.ravel()).isin([ANNOTATED, UNANNOTATED, ABSENT]).all():
        raise ConfigError("the presence matrix holds values other than 1, 0, -1", path)
    return table.astype(int)


def presence_array(path: str | Path, class_names: Sequence[str], sources: Sequence[str]) -> np.ndarray:
    """The int matrix (``sources`` x classes) in the dataset's class order; refuses a mismatch of the columns
    with ``class_names`` (vocabulary entries ``name/synonym/...``).

    Raises:
        ConfigError: other classes than the dataset's, or a source without a row.
    """
    table = read_presence(path)
    names = [str(n) for n in class_names]
    if table.shape[1] != len(names):
        raise ConfigError(f"presence matrix has {table.shape[1]} classes, the dataset {len(names)}", path)
    for i, (col, name) in enumerate(zip(table.columns, names)):
        if col != prompt_name(name):
            raise ConfigError(f"presence column {i} is {col!r} but class {i} is {name!r}", path)
    missing = [s for s in sources if s not in table.index]
    if missing:
        raise ConfigError(f"no presence row for source(s) {missing}", path)
    return table.loc[list(sources)].to_numpy(dtype=int)


def annotated_classes(table: pd.DataFrame, source: str) -> list[str]:
    """The classes a source annotates (M = 1); none for a source without a row."""
    if source not in table.index:
        return []
    row = table.loc[source]
    return [str(c) for c in row.index[row.to_numpy() == ANNOTATED]]


def image_sources(data_dir: str | Path) -> tuple[dict[str, int], list[str]]:
    """Image path (resolved) -> source index (row of presence.csv), read from the Omnis manifest, and the source
    names in row order; an image of a source without a row gets -1."""
    root = Path(data_dir)
    order = list(read_presence(root / "presence.csv").index)
    index = {name: i for i, name in enumerate(order)}
    manifest = pd.read_parquet(root / "manifest.parquet", columns=["image", "source"])
    mapping = {
        str((root / img).resolve()): index.get(str(src), -1) for img, src in zip(manifest["image"], manifest["source"])
    }
    return mapping, order
