"""The Omnis source catalogue as data: the vocabulary and the known public sources.

``vocabulary.yaml`` holds canonical class names, synonyms, the modalities a class can appear in and the
base/novel split; ``sources.yaml`` holds the public sources MedROV merged (modality, format, licence,
homepage, the row of the paper's presence matrix and, where needed, the native label map). Both are seeded by
``scripts/seed_catalog.py`` from MedROV's released presence matrix. ``recipes.yaml`` (read by
:mod:`medrov.catalog.recipes`) says how each source is read from its official download.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medrov.errors import ConfigError
from medrov.paths import CATALOG_DIR

MODALITIES = (
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "histopathology",
    "dermoscopy",
    "fundoscopy",
    "endoscopy",
    "microscopy",
)
VOLUME_MODALITIES = ("ct", "mri")


def normalise_name(name: str) -> str:
    """Case, underscore and whitespace-insensitive form used to match class names and synonyms."""
    return re.sub(r"\s+", " ", str(name).replace("_", " ").strip().lower())


@dataclass(frozen=True)
class VocabClass:
    """One canonical class: its id is its position in the vocabulary."""

    id: int
    name: str
    synonyms: tuple[str, ...]
    modalities: tuple[str, ...]
    split: str

    @property
    def prompt(self) -> str:
        """Name and synonyms joined by ``/``: ultralytics' world datasets pick one at random per image."""
        return "/".join((self.name, *self.synonyms))


@dataclass
class Vocabulary:
    classes: list[VocabClass]
    _index: dict[str, VocabClass] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for cls in self.classes:
            for alias in (cls.name, *cls.synonyms):
                key = normalise_name(alias)
                # a synonym shared by two classes would make lookups ambiguous: the canonical name wins
                if key not in self._index or normalise_name(self._index[key].name) != key:
                    self._index[key] = cls

    def __len__(self) -> int:
        return len(self.classes)

    def lookup(self, name: str) -> VocabClass | None:
        """The class whose name or synonym matches ``name`` (case/underscore-insensitive), or None."""
        return self._index.get(normalise_name(name))

    def __getitem__(self, name: str) -> VocabClass:
        cls = self.lookup(name)
        if cls is None:
            raise KeyError(name)
        return cls

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def novel(self) -> list[VocabClass]:
        return [c for c in self.classes if c.split == "novel"]


@dataclass(frozen=True)
class CatalogSource:
    """A known public source; ``presence`` is its row of the paper's matrix (absent classes are -1)."""

    name: str
    modality: str
    dims: int
    format: str
    title: str = ""
    licence: str = ""
    homepage: str = ""
    presence: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str | None] = field(default_factory=dict)


def _read_yaml(path: Path) -> Any:
    try:
        # libyaml's loader when present: the catalogue is parsed in every process that converts
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read catalogue file ({exc})", path) from exc


@lru_cache(maxsize=4)
def load_vocabulary(path: str | Path | None = None) -> Vocabulary:
    """The canonical vocabulary (default: the packaged ``vocabulary.yaml``)."""
    file = Path(path) if path else CATALOG_DIR / "vocabulary.yaml"
    raw = _read_yaml(file) or {}
    classes = []
    for i, entry in enumerate(raw.get("classes", [])):
        split = entry.get("split", "base")
        if split not in ("base", "novel"):
            raise ConfigError(f"class {entry.get('name')!r}: split must be base or novel, got {split!r}", file)
        unknown = set(entry.get("modalities", [])) - set(MODALITIES)
        if unknown:
            raise ConfigError(f"class {entry.get('name')!r}: unknown modalities {sorted(unknown)}", file)
        classes.append(
            VocabClass(
                id=i,
                name=str(entry["name"]),
                synonyms=tuple(str(s) for s in entry.get("synonyms") or ()),
                modalities=tuple(entry.get("modalities") or ()),
                split=split,
            )
        )
    if not classes:
        raise ConfigError("vocabulary has no classes", file)
    return Vocabulary(classes)


@lru_cache(maxsize=4)
def load_catalog(path: str | Path | None = None) -> dict[str, CatalogSource]:
    """Known public sources by name (default: the packaged ``sources.yaml``)."""
    file = Path(path) if path else CATALOG_DIR / "sources.yaml"
    raw = (_read_yaml(file) or {}).get("sources", {})
    out = {}
    for name, entry in raw.items():
        out[name] = CatalogSource(
            name=name,
            modality=entry["modality"],
            dims=int(entry.get("dims", 2)),
            format=entry.get("format", ""),
            title=entry.get("title", ""),
            licence=entry.get("licence", ""),
            homepage=entry.get("homepage", ""),
            presence={str(k): int(v) for k, v in (entry.get("presence") or {}).items()},
            labels={str(k): v for k, v in (entry.get("labels") or {}).items()},
        )
    return out
