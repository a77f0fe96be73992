"""The ``recipe`` adapter: reads a source as officially downloaded, driven by its recipe (catalog/recipes.yaml).

Enumeration globs each pattern of the recipe, pairs every image with its label file (``label_map``), its
per-structure mask files (``structures``) or reads boxes (``voc``/``coco``/``csv``, through the adapters of
those families), applies the row filter, the official split and the channel/frame selection, and reports
every file the layout cannot pair. Loading reads through :mod:`medrov.io` (NIfTI, MetaImage, NRRD, DICOM,
PNG/JPEG/GIF/TIFF, ``.mat``) and makes boxes with the same rules as the other adapters.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import logging
import re
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medrov.catalog.recipes import FilterRule, Pattern, Recipe, SelectRule, SplitRule
from medrov.config import DataParams
from medrov.data.adapters import (
    Item,
    Sample,
    Skipped,
    _require_objects,
    enumerate_coco,
    enumerate_csv,
    load_coco,
    load_csv,
    load_voc,
    safe_id,
    volume_samples,
)
from medrov.data.boxes import Box, mask_to_boxes
from medrov.data.normalise import to_uint8_image
from medrov.data.sources import CsvColumns, ResolvedSource
from medrov.errors import SourceReadError

log = logging.getLogger(__name__)

# compound suffixes first: "case_OAR_Brainstem.seg.nrrd" has the stem "case_OAR_Brainstem"
SUFFIXES = (
    ".nii.gz",
    ".seg.nrrd",
    ".nii",
    ".nrrd",
    ".mha",
    ".mhd",
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".mat",
    ".xml",
    ".json",
    ".csv",
    ".dcm",
)


def strip_suffix(name: str) -> str:
    """A file name without its (possibly compound) suffix."""
    lower = name.lower()
    for suffix in SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _excluded(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    # macOS leaves AppleDouble "._x" files (MSD tars) and __MACOSX folders (TNBC zip): never data
    if any(p.startswith("._") or p == "__MACOSX" for p in parts):
        return True
    return any(fnmatch(rel, pat) or fnmatch(parts[-1], pat) for pat in patterns)


def path_groups(rel: str, match: str | None) -> dict[str, str] | None:
    """Template fields of a relative path: stem, name, parent, rel and the named groups of ``match``."""
    path = PurePosixPath(rel)
    stem = strip_suffix(path.name)
    groups = {"name": path.name, "stem": stem, "parent": str(path.parent), "rel": str(path.parent / stem)}
    if match:
        found = re.search(match, rel)
        if not found:
            return None
        groups.update({k: v for k, v in found.groupdict().items() if v is not None})
    return groups


def _fill(template: str, groups: dict[str, str], recipe: Recipe, as_glob: bool = False) -> str:
    if as_glob:
        # the path's own parts are literal in a glob template: "[" in a file name is not a character class
        groups = {k: glob.escape(v) for k, v in groups.items()}
    try:
        return template.format(**groups)
    except (KeyError, IndexError) as exc:
        raise SourceReadError(
            f"recipe {recipe.name}: template {template!r} uses {exc} which the match regex does not give", None
        ) from exc


def _glob(root: Path, pattern: str) -> list[Path]:
    # glob.escape on the root: official folder names contain brackets and spaces ("benign (1).png")
    return sorted(
        Path(p) for p in glob.glob(glob.escape(str(root)) + "/" + pattern, recursive=True) if Path(p).is_file()
    )


def _norm_key(value: Any) -> str:
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


class _Tables:
    """Metadata CSVs (splits, frames, filters) read once per enumeration, keyed by a normalised id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[tuple, dict[str, dict[str, str]]] = {}

    def get(self, pattern: str, sep: str, key_column: str, required: bool = True) -> dict[str, dict[str, str]]:
        """Rows by key; a missing file is an error when ``required`` (filters, frames), else no rows (splits)."""
        key = (pattern, sep, key_column)
        if key not in self._cache:
            files = _glob(self.root, pattern)
            if not files:
                if not required:
                    log.warning("%s: split file %s not found: the hash split is used", self.root, pattern)
                    self._cache[key] = {}
                    return self._cache[key]
                raise SourceReadError(f"metadata file {pattern!r} not found under the source root", self.root)
            rows: dict[str, dict[str, str]] = {}
            for file in files:
                try:
                    with open(file, newline="", encoding="utf-8-sig") as fh:
                        reader = csv.DictReader(fh, delimiter=sep)
                        if key_column not in (reader.fieldnames or []):
                            raise SourceReadError(
                                f"CSV has no column {key_column!r} (columns {reader.fieldnames})", file
                            )
                        for row in reader:
                            rows[_norm_key(row[key_column])] = {
                                k.strip(): (v or "").strip() for k, v in row.items() if k
                            }
                except (OSError, UnicodeDecodeError) as exc:
                    raise SourceReadError(f"cannot read metadata CSV ({exc})", file) from exc
            self._cache[key] = rows
        return self._cache[key]


def _keep(rules: list[FilterRule], groups: dict[str, str], tables: _Tables) -> tuple[bool, str | None]:
    """Whether an input belongs to this row (every rule holds); a reason when that cannot be decided."""
    for rule in rules:
        keep, why = _keep_one(rule, groups, tables)
        if not keep or why:
            return keep, why
    return True, None


def _keep_one(rule: FilterRule, groups: dict[str, str], tables: _Tables) -> tuple[bool, str | None]:
    if rule.csv:
        key = groups.get(rule.key, "")
        table = tables.get(rule.csv, rule.sep, rule.key_column or "")
        row = table.get(_norm_key(key))
        if row is None:
            return False, f"no row for {key!r} in {rule.csv} (needed to choose the presence row)"
        value = row.get(rule.column or "", "")
    else:
        value = groups.get(rule.group or "", "")
    if rule.equals is not None and value != rule.equals:
        return False, None
    if rule.min is not None or rule.max is not None:
        try:
            number = float(value)
        except ValueError:
            return False, f"filter value {value!r} is not a number"
        if (rule.min is not None and number < rule.min) or (rule.max is not None and number > rule.max):
            return False, None
    return True, None


def _split(
    rule: SplitRule | None, pattern: Pattern, groups: dict[str, str], tables: _Tables, lists: dict[str, str]
) -> str | None:
    if pattern.split:
        return pattern.split
    if rule is None:
        return None
    if rule.group:
        return rule.values.get(groups.get(rule.group, ""), None)
    key = _norm_key(groups.get(rule.key, ""))
    if rule.lists:
        return lists.get(key)
    if rule.csv:
        row = tables.get(rule.csv, rule.sep, rule.key_column or "", required=False).get(key)
        value = (row or {}).get(rule.column or "", "")
        return value if value in ("train", "val", "test") else None
    return None


def _split_lists(rule: SplitRule | None, root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for split, pattern in rule.lists.items() if rule else ():
        for file in _glob(root, pattern):
            try:
                for line in file.read_text().split():
                    out[_norm_key(line)] = split
            except UnicodeDecodeError as exc:
                raise SourceReadError(f"split list is not UTF-8 text ({exc.reason} at byte {exc.start})", file) from exc
    return out


def _indices(rule: SelectRule | None, image: Path, groups: dict[str, str], tables: _Tables) -> list[int | None]:
    if rule is None:
        return [None]
    if rule.csv:
        row = tables.get(rule.csv, rule.sep, rule.key_column or "").get(_norm_key(groups.get(rule.key, "")))
        if row is None:
            raise SourceReadError(f"no row for {groups.get(rule.key)!r} in {rule.csv}: frames unknown", image)
        try:
            return sorted({int(float(row[c])) for c in rule.columns})
        except (KeyError, ValueError) as exc:
            raise SourceReadError(f"frame columns {rule.columns} missing or not numbers in {rule.csv}", image) from exc
    if rule.indices == "all":
        from medrov.io.frames import frame_count

        return list(range(frame_count(image)))
    return list(rule.indices or [None])


def recipe_of(source: ResolvedSource) -> Recipe:
    if source.recipe is None:
        raise SourceReadError(f"source {source.name} has format 'recipe' but no recipe", source.root)
    return source.recipe


def _patient(recipe: Recipe, rel: str, groups: dict[str, str]) -> str:
    if recipe.patient:
        found = re.search(recipe.patient, rel)
        if found:
            return found.groupdict().get("patient") or found.group(1 if found.groups() else 0)
    return groups.get("patient") or groups["rel"]


def warn_unverified(source: ResolvedSource) -> None:
    """One log line naming the UNVERIFIED facts the source's recipe relies on."""
    recipe = recipe_of(source)
    if recipe.unverified:
        log.warning(
            "%s: recipe %s relies on %d UNVERIFIED fact(s): %s",
            source.name,
            recipe.name,
            len(recipe.unverified),
            "; ".join(recipe.unverified),
        )


def enumerate_recipe(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    """Items of a source found under its root by its recipe, and the files the layout cannot pair."""
    recipe = recipe_of(source)
    warn_unverified(source)
    # the recipe is part of every item's spec, hence of its fingerprint: editing recipes.yaml reconverts
    digest = hashlib.blake2b(recipe.model_dump_json().encode(), digest_size=8).hexdigest()
    tables = _Tables(source.root)
    lists = _split_lists(recipe.split, source.root)
    items: list[Item] = []
    skipped: list[Skipped] = []
    for pattern in recipe.patterns:
        if recipe.annotation in ("coco", "csv"):
            found, lost = _enumerate_boxes(source, recipe, pattern)
            for item in found:
                item.spec["recipe"] = digest
                if recipe.split and recipe.split.lists:
                    name = Path(item.inputs[0]).name
                    item.split = lists.get(_norm_key(name)) or lists.get(_norm_key(strip_suffix(name))) or item.split
            items.extend(found)
            skipped.extend(lost)
            continue
        for file in _glob(source.root, pattern.images):
            rel = file.relative_to(source.root).as_posix()
            if _excluded(rel, recipe.exclude):
                continue
            groups = path_groups(rel, pattern.match)
            if groups is None:
                skipped.append(
                    Skipped(str(file), f"does not match the layout of recipe {recipe.name} ({pattern.match})")
                )
                continue
            keep, why = _keep(recipe.filter, groups, tables)
            if why:
                skipped.append(Skipped(str(file), why))
            if not keep:
                continue
            try:
                built = _pair(source, recipe, pattern, file, rel, groups)
                indices = _indices(recipe.select, file, groups, tables)
            except SourceReadError as exc:
                skipped.append(Skipped(str(file), exc.reason if hasattr(exc, "reason") else str(exc)))
                continue
            if isinstance(built, Skipped):
                skipped.append(built)
                continue
            inputs, spec = built
            split = _split(recipe.split, pattern, groups, tables, lists)
            group = _patient(recipe, rel, groups)
            base_id = safe_id(groups["stem"]) if recipe.annotation == "voc" else safe_id(strip_suffix(rel))
            for index in indices:
                suffix = (
                    ""
                    if index is None
                    else f"_{'t' if recipe.select and recipe.select.axis == 'time' else 'c'}{index:02d}"
                )
                items.append(
                    Item(
                        source.name,
                        base_id + suffix,
                        inputs,
                        group,
                        {**spec, "index": index, "recipe": digest},
                        split=split,
                    )
                )
    return items, skipped


def _pair(source: ResolvedSource, recipe: Recipe, pattern: Pattern, file: Path, rel: str, groups: dict[str, str]):
    if recipe.annotation == "label_map":
        label = source.root / _fill(pattern.label or "", groups, recipe)
        if not label.is_file():
            return Skipped(str(file), f"no label file: expected {label}")
        return [str(file), str(label)], {"kind": "label_map", "label": str(label)}
    if recipe.annotation == "structures":
        masks: dict[str, str] = {}
        for mask in _glob(source.root, _fill(pattern.masks or "", groups, recipe, as_glob=True)):
            mask_rel = mask.relative_to(source.root).as_posix()
            if _excluded(mask_rel, recipe.exclude) or mask == file:
                continue
            if recipe.class_from:
                token = groups.get(recipe.class_from)
                key = f"{token}#{len(masks)}"  # several mask files of one class (BUSI "_mask_1"): OR-merged as boxes
            else:
                found = re.search(recipe.token or "", mask_rel)
                if not found:
                    continue
                token = found.groupdict().get("label") or found.group(1 if found.groups() else 0)
                key = token
            masks[key] = str(mask)
        if not masks:
            return Skipped(str(file), f"no mask file matches {pattern.masks}")
        return [str(file), *masks.values()], {"kind": "structures", "masks": masks}
    if recipe.annotation == "voc":
        template = pattern.image or ""
        if any(c in template for c in "*?["):
            template = _fill(template, groups, recipe, as_glob=True)
            candidates = _glob(source.root, template)
        else:
            template = _fill(template, groups, recipe)
            candidates = [source.root / template]
        candidates = [c for c in candidates if c.is_file()]
        if len(candidates) != 1:
            what = "no image" if not candidates else f"{len(candidates)} images"
            return Skipped(str(file), f"{what} for this annotation: expected {template}")
        return [str(candidates[0]), str(file)], {"kind": "voc"}
    raise SourceReadError(f"recipe {recipe.name}: annotation {recipe.annotation!r} has no pairing", file)


def _boxes_source(source: ResolvedSource, recipe: Recipe, annotations: str, images: str) -> ResolvedSource:
    spec = source.spec.model_copy(
        update={
            "annotations": annotations,
            "images": images,
            "csv_box": recipe.csv_box,
            "csv_columns": CsvColumns(**recipe.csv_columns) if recipe.csv_columns else source.spec.csv_columns,
        }
    )
    return source.model_copy(update={"spec": spec})


def _enumerate_boxes(source: ResolvedSource, recipe: Recipe, pattern: Pattern) -> tuple[list[Item], list[Skipped]]:
    """COCO / CSV: one annotation file per match of the pattern, read by the adapter of that family."""
    items, skipped = [], []
    files = _glob(source.root, pattern.images)
    if not files:
        return [], [Skipped(str(source.root / pattern.images), f"annotation file not found (recipe {recipe.name})")]
    for file in files:
        rel = file.relative_to(source.root).as_posix()
        groups = path_groups(rel, pattern.match) or path_groups(rel, None)
        images = _fill(pattern.image or ".", groups, recipe)
        sub = _boxes_source(source, recipe, rel, images)
        found, lost = (enumerate_coco if recipe.annotation == "coco" else enumerate_csv)(sub)
        for item in found:
            item.spec = {**item.spec, "kind": recipe.annotation}
            item.split = pattern.split or item.split
            item.group = _patient(recipe, Path(item.inputs[0]).name, path_groups(Path(item.inputs[0]).name, None))
        items.extend(found)
        skipped.extend(lost)
    return items, skipped


# ---------------------------------------------------------------- loading


def load_recipe(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    """Samples of one recipe item (see :func:`enumerate_recipe`)."""
    recipe = recipe_of(source)
    kind = item.spec.get("kind")
    if kind == "voc":
        return load_voc(source, item, params)
    if kind == "coco":
        return load_coco(source, item, params)
    if kind == "csv":
        return load_csv(
            _boxes_source(source, recipe, source.spec.annotations or "", source.spec.images or "."), item, params
        )
    if recipe.dims == 3:
        return _load_volume(source, recipe, item, params)
    return _load_plane(source, recipe, item, params)


def _label_frame(path: str, index: int | None) -> int | None:
    """The image's frame for a 4D label volume (M&Ms ``_sa_gt``), None for a 3D one (MSD Task01 labels)."""
    if index is None or not path.lower().endswith((".nii", ".nii.gz")):
        return None
    from medrov.io.frames import frame_count

    return index if frame_count(path) > 1 else None


def _load_volume(
    source: ResolvedSource, recipe: Recipe, item: Item, params: DataParams
) -> tuple[list[Sample], list[dict]]:
    from medrov.io.frames import read_volume_frame
    from medrov.io.volume import Volume, reorient

    index = item.spec.get("index")
    image = reorient(read_volume_frame(item.inputs[0], index))
    if recipe.intensity_offset:
        image.array = image.array.astype(np.float32) + np.float32(recipe.intensity_offset)
    if item.spec["kind"] == "label_map":
        label_path = item.spec["label"]
        label = reorient(read_volume_frame(label_path, _label_frame(label_path, index)))
        return volume_samples(source, image, label, params)
    # per-structure masks -> one label volume; later structures of the label map win where they overlap, as
    # TotalSegmentator's own converter does
    order = {native: i for i, native in enumerate(source.class_map)}
    masks = item.spec["masks"]
    unknown = sorted(t for t in masks if t not in order)
    if unknown:
        raise SourceReadError(
            f"unknown structure names {unknown} (not in the label map of source {source.name})", item.inputs[0]
        )
    merged = None
    first = None
    class_map: dict[str, str | None] = {}
    for native_id, token in enumerate(sorted(masks, key=order.__getitem__), start=1):
        mask = reorient(read_volume_frame(masks[token]))
        if first is None:
            # int16 holds every structure id (TotalSegmentator has 117) at half the memory of int32
            first, merged = mask, np.zeros(mask.array.shape, dtype=np.int16 if len(masks) < 2**15 else np.int32)
        elif mask.array.shape != first.array.shape or not np.allclose(mask.affine, first.affine, atol=1e-3):
            raise SourceReadError(
                f"mask {Path(masks[token]).name} is not on the grid of {first.path.name}", masks[token]
            )
        merged[np.asarray(mask.array) > 0] = native_id
        class_map[str(native_id)] = source.class_map[token]
    label = Volume(merged, first.affine, first.path, {"format": "structures"})
    return volume_samples(source, image, label, params, class_map)


def _as_label(array: np.ndarray, path: str) -> np.ndarray:
    if array.ndim == 3:
        # colour masks: foreground is any non-black colour; an alpha channel is opacity, not foreground
        array = array[..., :3].max(axis=2)
    if np.issubdtype(array.dtype, np.floating) and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))
    ):
        raise SourceReadError("label image has non-integer values (set a threshold for lossy masks)", path)
    if array.dtype.kind not in "iub" and not np.issubdtype(array.dtype, np.floating):
        raise SourceReadError(f"label image has unsupported type {array.dtype}", path)
    array = array.astype(np.int64)
    if array.min(initial=0) < 0:
        raise SourceReadError(f"negative label ids (min {int(array.min())})", path)
    return array


def _load_plane(
    source: ResolvedSource, recipe: Recipe, item: Item, params: DataParams
) -> tuple[list[Sample], list[dict]]:
    from medrov.io.planar import read_plane

    image_path = item.inputs[0]
    pixels = to_uint8_image(read_plane(image_path, frame=item.spec.get("index")).array, params.mri_percentiles)
    height, width = pixels.shape[:2]
    mode = source.spec.boxes or params.boxes
    boxes: list[Box] = []

    def checked(array: np.ndarray, where: str) -> np.ndarray:
        if array.shape != (height, width):
            raise SourceReadError(f"image/mask shape mismatch: image {(height, width)} vs mask {array.shape}", where)
        return array

    if item.spec["kind"] == "structures":
        for key, mask_file in item.spec["masks"].items():
            token = key.split("#")[0] if recipe.class_from else key
            if token not in source.class_map:
                raise SourceReadError(
                    f"unknown label {token!r} (source {source.name} maps {sorted(source.class_map)})", mask_file
                )
            target = source.class_map[token]
            mask = checked(_as_label(read_plane(mask_file, as_mask=True).array, mask_file), mask_file)
            if target is None:
                continue
            binary = (mask > (recipe.threshold or 0)).astype(np.uint8)
            boxes += [
                Box(target, b.x0, b.y0, b.x1, b.y1)
                for _, b in mask_to_boxes(binary, mode, params.connectivity, params.min_box_pixels)
            ]
    else:
        label_file = item.spec["label"]
        if recipe.label_key or not recipe.instance_key:
            lab = checked(
                _as_label(read_plane(label_file, key=recipe.label_key, as_mask=True).array, label_file), label_file
            )
        else:
            lab = None
        if lab is not None and recipe.threshold is not None:
            lab = (lab > recipe.threshold).astype(np.int64)  # lossy or 0/255 masks: one foreground id, "1"
        if recipe.instance_key:
            inst = checked(_as_label(read_plane(label_file, key=recipe.instance_key).array, label_file), label_file)
            boxes = _instance_boxes(source, inst, lab, label_file, params)
        else:
            ids = [int(i) for i in np.unique(lab) if i]
            unknown = [i for i in ids if str(i) not in source.class_map]
            if unknown:
                raise SourceReadError(
                    f"unknown label ids {unknown} (not in the label map of source {source.name})", label_file
                )
            keep = [i for i in ids if source.class_map[str(i)] is not None]
            mapped = np.where(np.isin(lab, keep), lab, 0)
            boxes = [
                Box(source.class_map[str(i)], b.x0, b.y0, b.x1, b.y1)
                for i, b in mask_to_boxes(mapped, mode, params.connectivity, params.min_box_pixels)
            ]
    _require_objects(boxes, image_path, params, "every mask is empty")
    return [Sample("", pixels, boxes)], []


def _instance_boxes(
    source: ResolvedSource, inst: np.ndarray, types: np.ndarray | None, where: str, params: DataParams
) -> list[Box]:
    """One box per instance id; its class is the most frequent type id under it (or "1" without a type map)."""
    from scipy import ndimage

    boxes = []
    top = int(inst.max(initial=0))
    for idx, sl in enumerate(ndimage.find_objects(inst.astype(np.int32), max_label=top), start=1):
        if sl is None:
            continue
        region = inst[sl] == idx
        if int(region.sum()) < params.min_box_pixels:
            continue
        if types is None:
            native = 1
        else:
            values = types[sl][region]
            values = values[values > 0]
            if values.size == 0:
                raise SourceReadError(f"instance {idx} has no type in the type map", where)
            native = int(np.bincount(values).argmax())
        if str(native) not in source.class_map:
            raise SourceReadError(
                f"unknown type id {native} of instance {idx} (not in the label map of source {source.name})", where
            )
        target = source.class_map[str(native)]
        if target is None:
            continue
        rows, cols = np.nonzero(region)
        boxes.append(
            Box(
                target,
                int(sl[1].start + cols.min()),
                int(sl[0].start + rows.min()),
                int(sl[1].start + cols.max() + 1),
                int(sl[0].start + rows.max() + 1),
            )
        )
    return boxes
