"""The dataset-class presence matrix M[source, class]: 1 annotated, 0 may be present but unannotated, -1 cannot
exist. Written by conversion, read here once for training, the mechanisms and evaluation.

A source with ``presence: per_image`` annotates per image: each image (or group of images) gets its own row in
``image_presence.csv`` (1 for the classes it has labels for, 0 for the other classes its modality can hold, -1
elsewhere) and the manifest names that row (``presence_row``) and the set (``annotated``). :func:`presence_rows`
is the one reading of both tables: every image's row, for the prompt sampler, the pseudo-label rule and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from medrov.catalog import Vocabulary
from medrov.data.sources import ResolvedSource
from medrov.errors import ConfigError
from medrov.prompts import prompt_name

ANNOTATED, UNANNOTATED, ABSENT = 1, 0, -1
IMAGE_PRESENCE = "image_presence.csv"
CLASS_SET_SEPARATOR = "|"  # joins an image's class set in the manifest's ``annotated`` column


def presence_row(source: ResolvedSource, vocab: Vocabulary, extra: Iterable[str] = ()) -> dict[str, int]:
    """One source's row.

    A catalogue source starts from the paper's row; a new source is derived: classes it annotates are 1,
    classes that can appear in its modality are 0, the rest -1. Per-source overrides from the sources file
    come next, and classes the source annotates are always 1 (an override saying otherwise is an error).
    ``extra`` are classes annotated somewhere in the source beyond its label map (a per-image source's images).
    """
    annotated = {name for name in source.class_map.values() if name is not None} | set(extra)
    if source.catalog_presence is not None:
        row = {c.name: ABSENT for c in vocab.classes}
        for name, value in source.catalog_presence.items():
            cls = vocab.lookup(name)
            if cls is None:
                raise ConfigError(f"catalogue row {source.name} names unknown class {name!r}")
            row[cls.name] = value
    else:
        row = {c.name: (UNANNOTATED if source.modality in c.modalities else ABSENT) for c in vocab.classes}
    for name, value in source.spec.presence_overrides.items():
        cls = vocab[name]
        if cls.name in annotated and value != ANNOTATED:
            raise ConfigError(f"source {source.name}: presence override sets annotated class {cls.name!r} to {value}")
        row[cls.name] = value
    for name in annotated:
        row[name] = ANNOTATED
    return row


def presence_matrix(
    sources: list[ResolvedSource], vocab: Vocabulary, annotated: Mapping[str, Iterable[str]] | None = None
) -> pd.DataFrame:
    """M over the given sources (rows, in order) and the whole vocabulary (columns, in vocabulary order).

    ``annotated``: per source, classes its images annotate beyond its label map (per-image sources: the union).
    """
    annotated = annotated or {}
    frame = pd.DataFrame(
        [presence_row(s, vocab, annotated.get(s.name, ())) for s in sources],
        index=[s.name for s in sources],
        columns=vocab.names,
        dtype="int8",
    )
    frame.index.name = "source"
    return frame


def image_presence_row(classes: Iterable[str], modality: str, vocab: Vocabulary) -> dict[str, int]:
    """The row of an image of a per-image source: 1 for the classes it has labels for, 0 for the other classes
    its modality can hold, -1 elsewhere."""
    mine = {vocab[name].name for name in classes}
    return {
        c.name: ANNOTATED if c.name in mine else UNANNOTATED if modality in c.modalities else ABSENT
        for c in vocab.classes
    }


def row_name(source: str, number: int) -> str:
    """The name of a per-image row in ``image_presence.csv`` (``source@number``)."""
    return f"{source}@{number}"


def image_presence_matrix(rows: Mapping[str, tuple[str, Iterable[str]]], vocab: Vocabulary) -> pd.DataFrame:
    """``image_presence.csv``: one row per distinct (source, class set) of per-image sources.

    Args:
        rows: row name -> (modality, annotated classes).
    """
    frame = pd.DataFrame(
        [image_presence_row(classes, modality, vocab) for modality, classes in rows.values()],
        index=list(rows),
        columns=vocab.names,
        dtype="int8",
    )
    frame.index.name = "row"
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


@dataclass
class PresenceRows:
    """Every presence row of a dataset and which image uses which.

    Attributes:
        names: row names: the sources of ``presence.csv`` (in its order), then the rows of ``image_presence.csv``.
        sources: the source of each row.
        matrix: (rows, classes) ints 1 / 0 / -1, columns in the dataset's class order.
        image_row: resolved image path -> row index (-1: its source has no row).
        image_rel: image path as the manifest writes it -> row index.
    """

    names: list[str]
    sources: list[str]
    matrix: np.ndarray
    image_row: dict[str, int]
    image_rel: dict[str, int]

    def annotated(self, image: str) -> set[int]:
        """Class ids with M=1 in the row of ``image`` (manifest path); empty for an image without a row."""
        row = self.image_rel.get(image, -1)
        return set() if row < 0 else {int(c) for c in np.flatnonzero(self.matrix[row] == ANNOTATED)}


def _check_columns(table: pd.DataFrame, names: Sequence[str], path: Path) -> None:
    if table.shape[1] != len(names):
        raise ConfigError(f"presence matrix has {table.shape[1]} classes, the dataset {len(names)}", path)
    for i, (col, name) in enumerate(zip(table.columns, names)):
        if col != prompt_name(name):
            raise ConfigError(f"presence column {i} is {col!r} but class {i} is {name!r}", path)


def presence_rows(data_dir: str | Path, class_names: Sequence[str] | None = None) -> PresenceRows:
    """The presence rows of an Omnis dataset and the row of every manifest image (its ``presence_row``, or its
    source's row for a manifest written before per-image presence).

    Args:
        class_names: the dataset's classes (``omnis.yaml`` names); the columns must match them (None: no check).

    Raises:
        ConfigError: a table is unreadable or its columns differ from ``class_names``; a manifest row names a
            presence row that does not exist.
    """
    root = Path(data_dir)
    table = read_presence(root / "presence.csv")
    names = [str(n) for n in table.index]
    sources = list(names)
    frames = [table]
    if (root / IMAGE_PRESENCE).is_file():
        images = read_presence(root / IMAGE_PRESENCE)
        if list(images.columns) != list(table.columns):
            raise ConfigError("its columns differ from presence.csv's", root / IMAGE_PRESENCE)
        names += [str(n) for n in images.index]
        sources += [str(n).rsplit("@", 1)[0] for n in images.index]
        frames.append(images)
    if class_names is not None:
        for frame, file in zip(frames, ("presence.csv", IMAGE_PRESENCE)):
            _check_columns(frame, [str(n) for n in class_names], root / file)
    matrix = np.concatenate([f.to_numpy(dtype=int) for f in frames]) if frames else np.zeros((0, 0), int)
    index = {name: i for i, name in enumerate(names)}
    # three columns only: the manifest of a large dataset is read once per training process
    try:
        manifest = pd.read_parquet(root / "manifest.parquet", columns=["image", "source", "presence_row"])
    except ValueError:  # a manifest written before per-image presence has no presence_row (pyarrow's ArrowInvalid)
        manifest = pd.read_parquet(root / "manifest.parquet", columns=["image", "source"])
    keys = manifest["presence_row"] if "presence_row" in manifest else manifest["source"]
    keys = keys.where(keys.notna(), manifest["source"]).astype(str)
    missing = sorted({k for k in keys if "@" in k and k not in index})
    if missing:
        raise ConfigError(f"manifest names presence rows {missing[:5]} that image_presence.csv lacks", root)
    image_rel = {str(img): index.get(key, -1) for img, key in zip(manifest["image"], keys)}
    image_row = {str((root / img).resolve()): row for img, row in image_rel.items()}
    return PresenceRows(names, sources, matrix, image_row, image_rel)


def image_sources(data_dir: str | Path) -> tuple[dict[str, int], list[str]]:
    """Image path (resolved) -> presence row index, and the row names in order (see :func:`presence_rows`); an
    image of a source without a row gets -1."""
    rows = presence_rows(data_dir)
    return rows.image_row, rows.names
