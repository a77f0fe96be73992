"""The user's sources file: which sources they have, where they are on disk, how to read them.

A source named like a catalogue entry (``BCCD``, ``TotalSegmentorCT``...) inherits its modality, format,
presence row and label map; a new source gives ``modality``, ``format`` and ``labels`` itself. Paths are
relative to the sources file; ``{shared}`` expands to the shared data folder and ``$VARS`` to the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from medrov import paths
from medrov.catalog import MODALITIES, CatalogSource, Vocabulary, load_catalog, normalise_name
from medrov.catalog.recipes import Recipe, recipe_for_source
from medrov.config import Section
from medrov.errors import ConfigError

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
    presence: dict[str, Literal[-1, 0, 1]] = {}
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


class ResolvedSource(Section):
    """A source with catalogue defaults filled in, absolute paths and classes checked against the vocabulary."""

    spec: SourceSpec
    root: Path
    modality: str
    format: Format
    dims: int
    class_map: dict[str, str | None]
    catalog_presence: dict[str, int] | None = None
    recipe: Recipe | None = None
    # mask2d without ``classes:``: normalised vocabulary names and synonyms -> class, to name discovered masks
    vocabulary_index: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.spec.name

    def path(self, relative: str) -> Path:
        return paths.resolve(relative, self.root)


def expand(text: str) -> str:
    """``{shared}`` -> the shared data folder, then ``$VAR``/``~`` expansion."""
    return os.path.expanduser(os.path.expandvars(text.replace("{shared}", str(paths.shared_data_dir()))))


def load_sources_file(path: str | Path) -> tuple[list[SourceSpec], Path]:
    """Parse a sources file; returns the specs and the folder relative paths are taken from."""
    file = paths.resolve(path)
    if not file.is_file():
        raise ConfigError("sources file not found", file)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", file) from exc
    entries = raw.get("sources") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise ConfigError("expected a top-level 'sources:' list", file)
    specs, seen = [], set()
    for i, entry in enumerate(entries):
        try:
            spec = SourceSpec.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            name = entry.get("name", f"#{i + 1}") if isinstance(entry, dict) else f"#{i + 1}"
            raise ConfigError(f"source {name}: {problems}", file) from exc
        if spec.name in seen:
            raise ConfigError(f"source {spec.name} is listed twice", file)
        seen.add(spec.name)
        specs.append(spec)
    return specs, file.parent


def resolve_source(spec: SourceSpec, base: Path, vocab: Vocabulary, where: Path) -> ResolvedSource:
    """Fill catalogue defaults and check modality, format and every class name against the vocabulary."""
    known: CatalogSource | None = load_catalog().get(spec.name)
    recipe = recipe_for_source(spec, where)
    if recipe is not None and known is None and spec.recipe:
        known = load_catalog().get(recipe.row)
    modality = spec.modality or (recipe.modality if recipe else None) or (known.modality if known else None)
    fmt = "recipe" if recipe else spec.format or (_FORMAT_ALIASES.get(known.format, known.format) if known else None)
    if modality not in MODALITIES:
        raise ConfigError(f"source {spec.name}: modality {modality!r} is not one of {list(MODALITIES)}", where)
    if fmt is None:
        raise ConfigError(f"source {spec.name}: no format given and not in the catalogue", where)
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
            raise ConfigError(
                f"source {spec.name}: label {native!r} maps to {target!r}, which is not in the vocabulary", where
            )
        resolved_map[native] = cls.name
    for cls_name in spec.presence:
        if vocab.lookup(cls_name) is None:
            raise ConfigError(f"source {spec.name}: presence override for unknown class {cls_name!r}", where)
    return ResolvedSource(
        spec=spec,
        root=paths.resolve(expand(spec.root), base),
        modality=modality,
        format=fmt,
        dims=(recipe.dims if recipe else 3 if fmt == "volume" else 2),
        class_map=resolved_map,
        catalog_presence=dict(known.presence) if known else None,
        recipe=recipe,
        vocabulary_index=(
            {normalise_name(n): c.name for c in vocab.classes for n in (c.name, *c.synonyms)}
            if fmt == "mask2d" and not spec.classes
            else {}
        ),
    )


def resolve_sources(path: str | Path, vocab: Vocabulary) -> tuple[list[ResolvedSource], list[str]]:
    """All sources of a file that exist on disk; optional ones that are missing are skipped with a message.

    Raises:
        ConfigError: a required source's root is missing, or any entry is invalid.
    """
    specs, base = load_sources_file(path)
    where = paths.resolve(path)
    sources, skipped = [], []
    for spec in specs:
        src = resolve_source(spec, base, vocab, where)
        if not src.root.exists():
            if spec.optional:
                skipped.append(f"{spec.name}: optional source skipped, {src.root} does not exist")
                continue
            raise ConfigError(f"source {spec.name}: root {src.root} does not exist", where)
        sources.append(src)
    return sources, skipped
