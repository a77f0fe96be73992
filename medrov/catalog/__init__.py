"""The Omnis source catalogue as data: the vocabulary and the known public sources.

``vocabulary.yaml`` holds canonical class names, synonyms, the modalities a class can appear in and the
base/novel split; ``sources.yaml`` holds the public sources MedROV merged (modality, format, licence,
homepage, the row of the paper's presence matrix and, where needed, the native label map). Both are seeded by
``scripts/seed_catalog.py`` from MedROV's released presence matrix. ``recipes.yaml`` (read by
:mod:`medrov.catalog.recipes`) says how each source is read from its official download.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import Field, ValidationError, field_validator

from medrov.config import Section
from medrov.errors import ConfigError, SourcesFileError
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
# the per-modality intensity normalisations of medrov.data.normalise: a user modality names the one it uses
NORMALISATIONS = ("hu_window", "percentiles", "photo")
BUILTIN_NORMALISATION = {m: {"ct": "hu_window", "mri": "percentiles"}.get(m, "photo") for m in MODALITIES}
# characters that separate synonyms (omnis.yaml), prompts (predict) and class sets (the manifest)
_RESERVED = ("/", ";", "|")


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
    """The class list (ids = positions) and the modalities with their normalisation.

    ``user`` is the sources file's ``vocabulary:`` block as applied (recorded in ``omnis.yaml``, so a converted
    dataset and a model trained on it know their vocabulary without the sources file).
    """

    classes: list[VocabClass]
    modalities: dict[str, str] = field(default_factory=lambda: dict(BUILTIN_NORMALISATION))
    user: dict[str, Any] = field(default_factory=dict)
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

    @property
    def aliases(self) -> list[str]:
        """Every canonical name and synonym (what a class reference may say), for close-match suggestions."""
        return [alias for c in self.classes for alias in (c.name, *c.synonyms)]

    def normalisation(self, modality: str) -> str:
        """The intensity normalisation a modality uses (one of :data:`NORMALISATIONS`)."""
        return self.modalities[modality]


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


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate (difflib), or an empty string when none is close."""
    key = normalise_name(word)
    by_key = {normalise_name(c): c for c in candidates}
    match = difflib.get_close_matches(key, list(by_key), n=1, cutoff=0.6)
    return f" (did you mean {by_key[match[0]]!r}?)" if match else ""


class UserClass(Section):
    """One class of a sources file's ``vocabulary:`` block."""

    name: str = Field(min_length=1)
    synonyms: list[str] = []
    modalities: list[str] = Field(min_length=1)
    split: Literal["base", "novel"] = "base"


class UserModality(Section):
    """One new modality of a ``vocabulary:`` block: the normalisation its images get."""

    normalisation: Literal["hu_window", "percentiles", "photo"]


class UserVocabulary(Section):
    """The ``vocabulary:`` block: classes and modalities added to the catalogue's."""

    classes: list[UserClass] = []
    modalities: dict[str, UserModality] = {}

    @field_validator("modalities", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # ``oct: photo`` is short for ``oct: {normalisation: photo}``
        if isinstance(value, dict):
            return {str(k): {"normalisation": v} if isinstance(v, str) else v for k, v in value.items()}
        return value


def pydantic_problems(exc: ValidationError, prefix: str, fields_of) -> list[str]:
    """One line per pydantic error; an unknown key gets a close-match suggestion among ``fields_of(loc)``."""
    out = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc)
        if e["type"] == "extra_forbidden":
            out.append(f"{prefix}unknown key {loc[-1]!r}{did_you_mean(loc[-1], fields_of(loc[:-1]))}")
        else:
            out.append(f"{prefix}{where}: {e['msg']}")
    return out


def _user_fields(loc: list[str]) -> list[str]:
    if not loc:
        return list(UserVocabulary.model_fields)
    if loc[0] == "classes":
        return list(UserClass.model_fields)
    return list(UserModality.model_fields)


def extend_vocabulary(base: Vocabulary, block: Any) -> tuple[Vocabulary, list[str]]:
    """``base`` plus a ``vocabulary:`` block, and every problem found (empty when the block is valid).

    User classes are appended in block order (catalogue ids never move). A class whose name or synonym collides
    with a catalogue name or synonym (or another user class) is left out and reported with the class it collides
    with; a new modality may not reuse a catalogue modality's name. Invalid entries are skipped, the rest applied,
    so a caller can report every problem of a sources file at once.
    """
    if block is None:
        return base, []
    try:
        user = UserVocabulary.model_validate(block)
    except ValidationError as exc:
        return base, pydantic_problems(exc, "vocabulary: ", _user_fields)
    problems: list[str] = []
    modalities = dict(base.modalities)
    for name, spec in user.modalities.items():
        if name in modalities:
            problems.append(f"vocabulary: modality {name!r} is already a catalogue modality")
            continue
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
            problems.append(f"vocabulary: modality {name!r}: use lower-case letters, digits, '_' and '-'")
            continue
        modalities[name] = spec.normalisation
    classes = list(base.classes)
    owner = {normalise_name(a): c for c in classes for a in (c.name, *c.synonyms)}
    applied = []
    for entry in user.classes:
        label = f"vocabulary: class {entry.name!r}"
        bad = False
        for alias in (entry.name, *entry.synonyms):
            taken = owner.get(normalise_name(alias))
            if taken is not None:
                kind = "name" if alias == entry.name else f"synonym {alias!r}"
                other = "catalogue class" if taken.id < len(base.classes) else "user class"
                problems.append(f"{label}: {kind} collides with {other} {taken.name!r}")
                bad = True
            elif any(ch in alias for ch in _RESERVED):
                problems.append(f"{label}: {alias!r} contains one of {' '.join(_RESERVED)} (reserved separators)")
                bad = True
        for modality in entry.modalities:
            if modality not in modalities:
                problems.append(f"{label}: unknown modality {modality!r}{did_you_mean(modality, list(modalities))}")
                bad = True
        if bad:
            continue
        cls = VocabClass(
            id=len(classes),
            name=entry.name,
            synonyms=tuple(entry.synonyms),
            modalities=tuple(entry.modalities),
            split=entry.split,
        )
        classes.append(cls)
        for alias in (cls.name, *cls.synonyms):
            owner[normalise_name(alias)] = cls
        applied.append(entry.model_dump())
    recorded = {
        "classes": applied,
        "modalities": {k: {"normalisation": v} for k, v in modalities.items() if k not in base.modalities},
    }
    return Vocabulary(classes, modalities, recorded if applied or recorded["modalities"] else {}), problems


def dataset_vocabulary(data_file: str | Path) -> Vocabulary:
    """The vocabulary a converted dataset was made with: the catalogue plus the ``vocabulary:`` block recorded in
    its ``omnis.yaml``; a missing file means the catalogue alone.

    Raises:
        ConfigError: the recorded block is invalid, or the class names no longer match the recorded ids (the
            catalogue changed since conversion: reconvert).
    """
    file = Path(data_file)
    if file.is_dir():
        file = file / "omnis.yaml"
    if not file.is_file():
        return load_vocabulary()
    spec = _read_yaml(file) or {}
    vocab, problems = extend_vocabulary(load_vocabulary(), spec.get("vocabulary") or None)
    if problems:
        raise SourcesFileError(problems, file)
    names = {int(k): str(v) for k, v in (spec.get("names") or {}).items()}
    if names and names != {c.id: c.prompt for c in vocab.classes}:
        raise ConfigError("its class names differ from the catalogue plus its vocabulary block: reconvert", file)
    return vocab
