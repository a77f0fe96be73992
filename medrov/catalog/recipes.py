"""Recipes: how each catalogue source is read from its official download, as data (``recipes.yaml``).

A recipe names the globs of the official layout, how an image finds its label file(s), the native label id
(or mask name, or annotation field) -> vocabulary class map, the patient id pattern, the official split,
which channel or frames of 4D data to use and the facts that are still UNVERIFIED. Recipes built on a shared
``layout`` (``msd``, ``nnunet``, ``subject_masks``...) only add what differs, so a new source that follows a
shared layout needs YAML only. Sources split over several presence rows (AMOS, M5, MM-WHS) share one recipe
and differ by a row ``filter`` (and row-level overrides).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, field_validator, model_validator

from medrov.catalog import MODALITIES, _read_yaml
from medrov.config import Section
from medrov.errors import ConfigError
from medrov.paths import CATALOG_DIR

Annotation = Literal["label_map", "structures", "voc", "coco", "csv"]


class Pattern(Section):
    """One family of files in the download: images (or annotation files) and how they pair.

    ``match`` is a regex on the path relative to the root; its named groups, with ``stem``, ``name``,
    ``parent`` and ``rel``, fill the templates ``label``, ``masks`` and ``image``.
    """

    images: str
    match: str | None = None
    label: str | None = None
    masks: str | None = None
    image: str | None = None
    split: str | None = None


class SplitRule(Section):
    """Where the official split comes from: a regex group of the path, split list files, or a CSV column."""

    group: str | None = None
    values: dict[str, str] = {}
    lists: dict[str, str] = {}
    csv: str | None = None
    sep: str = ","
    key_column: str | None = None
    column: str | None = None
    key: str = "stem"

    @field_validator("values")
    @classmethod
    def _values_are_splits(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(v for v in value.values() if v not in ("train", "val", "test"))
        if bad:
            raise ValueError(f"split values must be train/val/test, got {bad}")
        return value

    @field_validator("lists")
    @classmethod
    def _lists_are_splits(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in value if k not in ("train", "val", "test"))
        if bad:
            raise ValueError(f"split lists must be keyed train/val/test, got {bad}")
        return value


class SelectRule(Section):
    """Channel or frames of a 4D image: fixed ``indices`` (``all`` = each its own image) or from a CSV."""

    axis: Literal["channel", "time"] = "channel"
    indices: list[int] | Literal["all"] | None = None
    csv: str | None = None
    sep: str = ","
    key_column: str | None = None
    columns: list[str] = []
    key: str = "patient"

    @model_validator(mode="after")
    def _one_way(self) -> SelectRule:
        if (self.indices is None) == (self.csv is None):
            raise ValueError("select needs either indices or csv (+ key_column, columns)")
        if self.csv and (not self.key_column or not self.columns):
            raise ValueError("select from a CSV needs key_column and columns")
        return self


class FilterRule(Section):
    """Which inputs belong to a presence row: a path group equal to / within a range, or a CSV column value."""

    group: str | None = None
    equals: str | None = None
    min: float | None = None
    max: float | None = None
    csv: str | None = None
    sep: str = ","
    key_column: str | None = None
    column: str | None = None
    key: str = "case"


class Recipe(Section):
    """A source's official layout, resolved for one presence row (layout and row overrides applied)."""

    name: str
    row: str
    layout: str | None = None
    title: str = ""
    modality: str | None = None
    dims: Literal[2, 3]
    annotation: Annotation
    patterns: list[Pattern]
    exclude: list[str] = []
    labels: dict[str, str | None] = {}
    not_in_release: dict[str, str] = {}
    token: str | None = None
    class_from: str | None = None
    label_key: str | None = None
    instance_key: str | None = None
    threshold: float | None = None
    patient: str | None = None
    split: SplitRule | None = None
    select: SelectRule | None = None
    filter: list[FilterRule] = []
    intensity_offset: float = 0.0
    csv_columns: dict[str, str] = {}
    csv_box: Literal["xyxy", "xywh"] = "xyxy"
    unverified: list[str] = []
    notes: str = ""
    real_data_checked: bool = False  # the recipe has been run on a real copy of the download (tests do it)

    @field_validator("labels", mode="before")
    @classmethod
    def _string_keys(cls, value: Any) -> Any:
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("filter", mode="before")
    @classmethod
    def _filter_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @field_validator("modality")
    @classmethod
    def _modality(cls, value: str | None) -> str | None:
        if value is not None and value not in MODALITIES:
            raise ValueError(f"modality {value!r} is not one of {list(MODALITIES)}")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Recipe:
        for p in self.patterns:
            if self.annotation == "label_map" and not p.label:
                raise ValueError("label_map patterns need a 'label' template")
            if self.annotation == "structures" and not p.masks:
                raise ValueError("structures patterns need a 'masks' glob template")
            if self.annotation == "voc" and not p.image:
                raise ValueError("voc patterns glob the XML files and need an 'image' template")
        if self.annotation == "structures" and not (self.token or self.class_from):
            raise ValueError("structures need 'token' (regex on the mask path) or 'class_from' (an image path group)")
        return self


_MERGE = ("labels",)  # dict fields a row or recipe extends instead of replacing


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key in _MERGE and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**{str(k): v for k, v in out[key].items()}, **{str(k): v for k, v in value.items()}}
        elif key == "unverified" and isinstance(value, list):
            out[key] = [*out.get(key, []), *value]
        else:
            out[key] = value
    return out


_SHORTHAND = ("images", "match", "label", "masks", "image")


def _with_layout(layout: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The layout's fields under the entry's; explicit ``patterns`` replace the layout's single pattern."""
    base = dict(layout)
    base.pop("doc", None)
    if "patterns" in entry:
        for key in _SHORTHAND:
            base.pop(key, None)
    return _merge(base, entry)


def _patterns(entry: dict[str, Any]) -> dict[str, Any]:
    """Top-level ``images``/``match``/``label``/``masks``/``image`` are shorthand for one pattern."""
    entry = dict(entry)
    single = {k: entry.pop(k) for k in _SHORTHAND if k in entry}
    if single:
        if "patterns" in entry:
            raise ValueError("give either patterns or images/match/label, not both")
        entry["patterns"] = [single]
    return entry


def build_recipes(raw: dict[str, Any], where: Path) -> dict[str, Recipe]:
    """Resolve every row of a recipes document: ``{row name: Recipe}``."""
    layouts = raw.get("layouts") or {}
    out: dict[str, Recipe] = {}
    for name, entry in (raw.get("recipes") or {}).items():
        entry = dict(entry or {})
        layout = entry.get("layout")
        if layout is not None and layout not in layouts:
            raise ConfigError(f"recipe {name}: unknown layout {layout!r} (known: {sorted(layouts)})", where)
        rows = entry.pop("rows", None) or {name: {}}
        for row, overrides in rows.items():
            merged = _merge(_with_layout(layouts.get(layout) or {}, entry), overrides or {})
            try:
                out[row] = Recipe.model_validate({**_patterns(merged), "name": name, "row": row, "layout": layout})
            except (ValidationError, ValueError) as exc:
                raise ConfigError(f"recipe {name} (row {row}): {exc}", where) from exc
    return out


@lru_cache(maxsize=4)
def load_recipes(path: str | Path | None = None) -> dict[str, Recipe]:
    """Recipes by presence-row name (default: the packaged ``recipes.yaml``)."""
    file = Path(path) if path else CATALOG_DIR / "recipes.yaml"
    return build_recipes(_read_yaml(file) or {}, file)


@lru_cache(maxsize=4)
def load_layouts(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The shared layouts (name -> fields), for sources that follow one without a catalogue recipe."""
    file = Path(path) if path else CATALOG_DIR / "recipes.yaml"
    return dict((_read_yaml(file) or {}).get("layouts") or {})


def recipe_for_layout(name: str, layout: str, fields: dict[str, Any]) -> Recipe:
    """A recipe for a user source that follows a shared layout: the layout plus the source's own fields."""
    layouts = load_layouts()
    if layout not in layouts:
        raise ConfigError(f"source {name}: unknown layout {layout!r} (known: {sorted(layouts)})")
    merged = _with_layout(layouts[layout], fields)
    try:
        return Recipe.model_validate({**_patterns(merged), "name": name, "row": name, "layout": layout})
    except (ValidationError, ValueError) as exc:
        raise ConfigError(f"source {name} (layout {layout}): {exc}") from exc


def recipe_for_source(spec: Any, where: Path | None = None) -> Recipe | None:
    """The recipe a user's source entry asks for, or None when it describes its files itself.

    A catalogue name given with only a root (no ``format``, ``images``, ``annotations``, ``cases``) uses the
    catalogue recipe; ``recipe: ROW`` borrows a row's recipe under another name; ``layout: NAME`` follows a
    shared layout with the entry's ``label_map``; ``overrides`` replaces recipe fields in all three cases.
    """
    describes_itself = bool(spec.format or spec.images or spec.annotations or spec.cases)
    if describes_itself and (spec.layout or spec.recipe):
        raise ConfigError(
            f"source {spec.name}: give either format/images/annotations/cases or recipe/layout, not both", where
        )
    if spec.layout and spec.recipe:
        raise ConfigError(f"source {spec.name}: give either recipe or layout, not both", where)
    if spec.layout:
        recipe = recipe_for_layout(spec.name, spec.layout, {})
    elif spec.recipe:
        recipes = load_recipes()
        if spec.recipe not in recipes:
            raise ConfigError(
                f"source {spec.name}: no recipe {spec.recipe!r} (known: {', '.join(sorted(recipes))})", where
            )
        recipe = recipes[spec.recipe]
    elif not describes_itself and spec.name in load_recipes():
        recipe = load_recipes()[spec.name]
    else:
        if spec.overrides:
            raise ConfigError(
                f"source {spec.name}: 'overrides' needs a recipe (a catalogue name, recipe or layout)", where
            )
        return None
    if spec.overrides:
        merged = _merge(recipe.model_dump(exclude_none=True), _patterns(dict(spec.overrides)))
        try:
            recipe = Recipe.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(f"source {spec.name}: bad recipe overrides: {exc}", where) from exc
    return recipe


def presence_mismatches(recipe: Recipe, presence: dict[str, int], vocab: Any) -> list[str]:
    """Disagreements between a recipe's label map and its presence row (empty when they agree).

    Every class the recipe maps must be coded 1 in the row, and every class coded 1 must be mapped or listed
    in ``not_in_release`` with a reason.
    """
    problems = []
    mapped = set()
    for native, target in recipe.labels.items():
        if target is None:
            continue
        cls = vocab.lookup(target)
        if cls is None:
            problems.append(f"{recipe.row}: label {native!r} maps to {target!r}, not a vocabulary class")
            continue
        mapped.add(cls.name)
        if presence.get(cls.name, -1) != 1:
            problems.append(
                f"{recipe.row}: label {native!r} maps to {cls.name!r}, coded {presence.get(cls.name, -1)} (not 1) in the presence row"  # noqa: E501
            )
    absent = {}
    for name, reason in recipe.not_in_release.items():
        cls = vocab.lookup(name)
        if cls is None or not str(reason).strip():
            problems.append(f"{recipe.row}: not_in_release entry {name!r} needs a vocabulary class and a reason")
            continue
        absent[cls.name] = reason
        if cls.name in mapped:
            problems.append(f"{recipe.row}: {cls.name!r} is both mapped and listed as not in this release")
    for name, code in sorted(presence.items()):
        if code == 1 and name not in mapped and name not in absent:
            problems.append(f"{recipe.row}: {name!r} is coded 1 in the presence row but no label maps to it")
    return problems
