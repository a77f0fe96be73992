"""The user's sources file: which sources they have, where they are on disk, how to read them.

A source named like a catalogue entry (``BCCD``, ``TotalSegmentorCT``...) inherits its modality, format,
presence row and label map; a new source gives ``modality``, ``format`` and ``labels`` itself. Paths are
relative to the sources file; ``{shared}`` expands to the shared data folder and ``$VARS`` to the environment.
A top-level ``vocabulary:`` block adds classes and modalities to the catalogue's (:func:`sources_vocabulary`).

Every problem of the file (unknown keys, class names, modalities, vocabulary collisions, missing roots...) is
collected and reported at once, each with a close-match suggestion, as one :class:`SourcesFileError`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from medrov import paths
from medrov.catalog import (
    BUILTIN_NORMALISATION,
    CatalogSource,
    Vocabulary,
    did_you_mean,
    extend_vocabulary,
    load_catalog,
    load_vocabulary,
    normalise_name,
    pydantic_problems,
)
from medrov.catalog.recipes import Recipe, recipe_for_source
from medrov.config import Section
from medrov.errors import ConfigError, SourcesFileError

Format = Literal["volume", "mask2d", "voc", "coco", "csv", "yolo", "recipe"]
# catalogue formats name the file family; converters are per annotation family
_FORMAT_ALIASES = {"nifti": "volume", "dicom": "volume", "nii": "volume"}


class CaseSpec(Section):
    """One explicit image/label pair (volumes): ``image`` is a NIfTI file or a DICOM series folder."""

    image: str
    label: str
    patient: str | None = None


class CsvColumns(Section):
    image: str = "image"
    label: str = "label"
    x0: str = "x1"
    y0: str = "y1"
    x1: str = "x2"
    y1: str = "y2"


class SourceSpec(Section):
    """One entry of ``data/sources.yaml``."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    root: str
    # an absent root is skipped, and finding or converting nothing is not an error (convert exits 1 otherwise)
    optional: bool = False
    modality: str | None = None
    format: Format | None = None
    images: str | None = None
    labels: str | None = None
    annotations: str | None = None
    cases: list[CaseSpec] = []
    label_map: dict[str, str | None] = {}
    classes: list[str] = []
    csv_columns: CsvColumns = CsvColumns()
    csv_box: Literal["xyxy", "xywh"] = "xyxy"
    patient_pattern: str | None = None
    split: Literal["hash", "imagesets", "train", "val", "test"] = "hash"
    ct_window: tuple[float, float] | None = None
    mri_percentiles: tuple[float, float] | None = None
    boxes: Literal["components", "slice"] | None = None
    skip_empty_slices: bool | None = None
    # a dict overrides entries of the source's presence row; ``per_image``: each image annotates exactly the
    # classes it has labels for (images whose path gives the same ``presence_group`` match share their union)
    presence: dict[str, Literal[-1, 0, 1]] | Literal["per_image"] = {}
    presence_group: str | None = None
    # official download layouts (catalog/recipes.yaml): a catalogue name with only a root uses its recipe;
    # ``recipe`` borrows another row's, ``layout`` follows a shared layout, ``overrides`` changes recipe fields
    recipe: str | None = None
    layout: str | None = None
    overrides: dict[str, Any] = {}

    @field_validator("format", mode="before")
    @classmethod
    def _alias_format(cls, value: Any) -> Any:
        return _FORMAT_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("label_map", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("presence", mode="before")
    @classmethod
    def _presence_word(cls, value: Any) -> Any:
        # one clear message instead of pydantic's two for the union (mapping or the word per_image)
        if isinstance(value, str) and value != "per_image":
            raise ValueError(f"must be per_image or a mapping class -> 1/0/-1{did_you_mean(value, ['per_image'])}")
        return value

    @field_validator("presence_group")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression ({exc})") from None
        return value

    @property
    def per_image(self) -> bool:
        """Presence is per image (or per group of images), not one row for the whole source."""
        return self.presence == "per_image"

    @property
    def presence_overrides(self) -> dict[str, int]:
        return {} if isinstance(self.presence, str) else dict(self.presence)


class ResolvedSource(Section):
    """A source with catalogue defaults filled in, absolute paths and classes checked against the vocabulary."""

    spec: SourceSpec
    root: Path
    modality: str
    format: Format
    dims: int
    class_map: dict[str, str | None]
    # the user modality's normalisation; None: the catalogue modality's own (BUILTIN_NORMALISATION)
    normalisation_kind: str | None = None
    catalog_presence: dict[str, int] | None = None
    recipe: Recipe | None = None
    # mask2d without ``classes:``: normalised vocabulary names and synonyms -> class, to name discovered masks
    vocabulary_index: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def normalisation(self) -> str:
        """The intensity normalisation of the source's modality (``hu_window``, ``percentiles`` or ``photo``)."""
        return self.normalisation_kind or BUILTIN_NORMALISATION.get(self.modality, "photo")

    def path(self, relative: str) -> Path:
        return paths.resolve(relative, self.root)


def expand(text: str) -> str:
    """``{shared}`` -> the shared data folder, then ``$VAR``/``~`` expansion."""
    return os.path.expanduser(os.path.expandvars(text.replace("{shared}", str(paths.shared_data_dir()))))


_TOP_KEYS = ("sources", "vocabulary")
_NESTED = {"csv_columns": CsvColumns, "cases": CaseSpec}


def _spec_fields(loc: list[str]) -> list[str]:
    """The keys allowed where an unknown key was found (``loc``: its parents), for suggestions."""
    named = [p for p in loc if not p.isdigit()]
    model = _NESTED.get(named[-1]) if named else None
    return list((model or SourceSpec).model_fields)


def _read_raw(path: str | Path) -> tuple[dict[str, Any], Path]:
    file = paths.resolve(path)
    if not file.is_file():
        raise ConfigError("sources file not found", file)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), list):
        raise ConfigError("expected a top-level 'sources:' list", file)
    return raw, file


def _parse(raw: dict[str, Any]) -> tuple[list[SourceSpec], Vocabulary, list[str]]:
    """Specs and vocabulary of a parsed sources file, and every problem found (invalid entries are left out)."""
    problems = [
        f"unknown top-level key {key!r}{did_you_mean(str(key), _TOP_KEYS)}" for key in raw if key not in _TOP_KEYS
    ]
    vocab, vocab_problems = extend_vocabulary(load_vocabulary(), raw.get("vocabulary"))
    problems += vocab_problems
    specs, seen = [], set()
    for i, entry in enumerate(raw["sources"]):
        name = entry.get("name", f"#{i + 1}") if isinstance(entry, dict) else f"#{i + 1}"
        try:
            spec = SourceSpec.model_validate(entry)
        except ValidationError as exc:
            problems += pydantic_problems(exc, f"source {name}: ", _spec_fields)
            continue
        if spec.name in seen:
            problems.append(f"source {spec.name} is listed twice")
            continue
        if spec.presence_group and not spec.per_image:
            problems.append(f"source {spec.name}: presence_group needs presence: per_image")
        seen.add(spec.name)
        specs.append(spec)
    return specs, vocab, problems


def load_sources_file(path: str | Path) -> tuple[list[SourceSpec], Path]:
    """Parse a sources file; returns the specs and the folder relative paths are taken from.

    Raises:
        ConfigError: the file is missing or not YAML; :class:`SourcesFileError` with every invalid entry.
    """
    raw, file = _read_raw(path)
    specs, _, problems = _parse(raw)
    if problems:
        raise SourcesFileError(problems, file)
    return specs, file.parent


def sources_vocabulary(path: str | Path) -> Vocabulary:
    """The vocabulary of a sources file: the catalogue's classes and modalities, then its ``vocabulary:`` block
    (user classes appended in file order, so class ids are stable). Every reader of the class list gets it here
    (convert) or from the dataset's ``omnis.yaml`` (:func:`medrov.catalog.dataset_vocabulary`).

    Raises:
        SourcesFileError: the block is invalid (every problem listed).
    """
    raw, file = _read_raw(path)
    vocab, problems = extend_vocabulary(load_vocabulary(), raw.get("vocabulary"))
    if problems:
        raise SourcesFileError(problems, file)
    return vocab


def _class_problem(vocab: Vocabulary, what: str | None, name: str) -> str:
    """``what 'name', which is not in the vocabulary`` (``class 'name' is not...`` without ``what``) + a suggestion."""
    lead = f"class {name!r} is" if what is None else f"{what} {name!r}, which is"
    return f"{lead} not in the vocabulary{did_you_mean(name, vocab.aliases)}"


def resolve_source(
    spec: SourceSpec, base: Path, vocab: Vocabulary, where: Path, problems: list[str] | None = None
) -> ResolvedSource | None:
    """Fill catalogue defaults and check modality, format and every class name against the vocabulary.

    Args:
        problems: collects every problem of the entry (then None is returned when there is one); without it the
            first problem raises.

    Raises:
        ConfigError: only when ``problems`` is None.
    """
    found: list[str] = []
    try:
        recipe = recipe_for_source(spec, where)
    except ConfigError as exc:
        found.append(exc.reason)
        recipe = None
    known: CatalogSource | None = load_catalog().get(spec.name)
    if recipe is not None and known is None and spec.recipe:
        known = load_catalog().get(recipe.row)
    modality = spec.modality or (recipe.modality if recipe else None) or (known.modality if known else None)
    fmt = "recipe" if recipe else spec.format or (_FORMAT_ALIASES.get(known.format, known.format) if known else None)
    prefix = f"source {spec.name}: "
    if modality not in vocab.modalities:
        found.append(
            f"modality {modality!r} is not one of {list(vocab.modalities)}{did_you_mean(str(modality), list(vocab.modalities))}"  # noqa: E501
        )
    if fmt is None and not found:
        found.append("no format given and not in the catalogue")
    class_map: dict[str, str | None] = dict(recipe.labels) if recipe else dict(known.labels) if known else {}
    class_map.update(spec.label_map)
    for cls in spec.classes:
        class_map.setdefault(cls, cls)
    resolved_map: dict[str, str | None] = {}
    for native, target in class_map.items():
        if target is None:
            resolved_map[native] = None
            continue
        cls = vocab.lookup(target)
        if cls is None:
            what = None if native == target and native in spec.classes else f"label {native!r} maps to"
            found.append(_class_problem(vocab, what, target))
            continue
        resolved_map[native] = cls.name
    for cls_name in spec.presence_overrides:
        if vocab.lookup(cls_name) is None:
            found.append(_class_problem(vocab, "presence override for", cls_name))
    if found:
        if problems is None:
            raise ConfigError(prefix + found[0], where)
        problems.extend(prefix + p for p in found)
        return None
    return ResolvedSource(
        spec=spec,
        root=paths.resolve(expand(spec.root), base),
        modality=modality,
        format=fmt,
        dims=(recipe.dims if recipe else 3 if fmt == "volume" else 2),
        class_map=resolved_map,
        normalisation_kind=None if modality in BUILTIN_NORMALISATION else vocab.normalisation(modality),
        catalog_presence=dict(known.presence) if known else None,
        recipe=recipe,
        vocabulary_index=(
            {normalise_name(n): c.name for c in vocab.classes for n in (c.name, *c.synonyms)}
            if fmt == "mask2d" and not spec.classes
            else {}
        ),
    )


def resolve_sources(path: str | Path, vocab: Vocabulary | None = None) -> tuple[list[ResolvedSource], list[str]]:
    """All sources of a file that exist on disk; optional ones that are missing are skipped with a message.

    Args:
        vocab: the vocabulary to check class names against (default: the file's own, :func:`sources_vocabulary`).

    Raises:
        SourcesFileError: every problem of the file at once (invalid entries, unknown classes or modalities,
            vocabulary collisions, a required source's root missing), each with a close-match suggestion.
    """
    raw, file = _read_raw(path)
    specs, own_vocab, problems = _parse(raw)
    vocab = vocab or own_vocab
    sources, skipped = [], []
    for spec in specs:
        src = resolve_source(spec, file.parent, vocab, file, problems)
        if src is None:
            continue
        if not src.root.exists():
            if spec.optional:
                skipped.append(f"{spec.name}: optional source skipped, {src.root} does not exist")
                continue
            problems.append(f"source {spec.name}: root {src.root} does not exist")
            continue
        sources.append(src)
    if problems:
        raise SourcesFileError(problems, file)
    return sources, skipped
