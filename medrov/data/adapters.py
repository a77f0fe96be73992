"""One adapter per annotation family, all behind one interface.

``enumerate_items(source)`` finds the inputs of a source on disk (cheap, in the main process) and returns the
items to convert plus the inputs that cannot even become an item (an image with no annotation file...).
``load_samples(source, item, params)`` runs in a worker: it reads one item and returns 2D samples (8-bit
image, boxes with canonical class names, geometry) or raises :class:`SourceReadError`. An item is converted
whole or quarantined whole.
"""

from __future__ import annotations

import bisect
import csv
import glob
import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medrov.catalog import normalise_name
from medrov.config import DataParams
from medrov.data.boxes import Box, check_box, mask_to_boxes, slice_boxes
from medrov.data.normalise import to_uint8_image
from medrov.data.slicing import axial_stack, volume_slices
from medrov.data.sources import ResolvedSource
from medrov.errors import SourceReadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz")

log = logging.getLogger("medrov.convert")


@dataclass
class Item:
    """One input unit of a source: converted whole or quarantined whole."""

    source: str
    item_id: str
    inputs: list[str]
    group: str
    spec: dict[str, Any] = field(default_factory=dict)
    split: str | None = None


@dataclass
class Sample:
    """One 2D image ready to write, with its boxes and where it came from."""

    suffix: str
    image: np.ndarray
    boxes: list[Box]
    slice_index: int = -1
    spacing: tuple[float, float, float] = (float("nan"), float("nan"), float("nan"))
    stats: dict[str, int] = field(default_factory=dict)  # what the converter did, summed into the convert summary


@dataclass
class Skipped:
    """An input found on disk that cannot become an item."""

    input: str
    reason: str
    level: str = "input"  # "mask": one file of an item that still converts (the item is not counted as quarantined)
    action: str = "quarantined"


def safe_id(relative: str) -> str:
    """A filesystem-safe, stable id from a path relative to the source root."""
    stem = relative
    for suffix in (*VOLUME_SUFFIXES, *IMAGE_SUFFIXES, ".xml", ".txt", ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.strip("/").replace("/", "__")) or "item"


def _group(source: ResolvedSource, item_id: str, fallback: str | None = None) -> str:
    """Patient/volume group used for splitting: the regex group ``patient`` (or group 1) of the item id."""
    pattern = source.spec.patient_pattern
    if pattern:
        match = re.search(pattern, item_id)
        if match:
            return match.groupdict().get("patient") or match.group(1 if match.groups() else 0)
    return fallback or item_id


OUTSIDE_ROOT = "path outside the source root"


@contextmanager
def entry_guard(skipped: list[Skipped], where: str | Path) -> Iterator[None]:
    """Any error while listing one entry skips that entry only (with its reason), never the whole source."""
    try:
        yield
    except SourceReadError as exc:
        skipped.append(Skipped(str(exc.path or where), exc.reason))
    except Exception as exc:  # an unforeseen error in one entry is still that entry's fault
        skipped.append(Skipped(str(where), f"cannot read this entry ({type(exc).__name__}: {exc})"))


def confined(source: ResolvedSource, path: Path, named: str, where: str | Path) -> Path:
    """``path`` (taken from an annotation file) if it resolves inside the source root, symlinks resolved.

    Raises:
        SourceReadError: it leaves the root (absolute path, ``..``, or a symlink pointing elsewhere): an
            annotation file must not make convert copy an arbitrary host file into the dataset.
    """
    try:
        inside = path.resolve().is_relative_to(source.root.resolve())
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise SourceReadError(f"cannot resolve {named!r} ({exc})", where) from exc
    if not inside:
        raise SourceReadError(f"{OUTSIDE_ROOT}: {named!r} resolves to {path.resolve()}", where)
    return path


def parse_xml(path: str | Path) -> ET.Element:
    """The root element of an XML file, or :class:`SourceReadError` saying why it cannot be read."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise SourceReadError(f"malformed XML ({exc})", path) from exc
    except (LookupError, ValueError) as exc:  # expat knows only single-byte encodings and UTF-8/16
        raise SourceReadError(f"XML declares an encoding that cannot be read ({exc}): save it as UTF-8", path) from exc
    except IsADirectoryError as exc:
        raise SourceReadError("a folder, not an XML file", path) from exc
    except FileNotFoundError as exc:
        raise SourceReadError("file not found (a dangling symlink?)", path) from exc
    except OSError as exc:
        raise SourceReadError(f"cannot read XML ({exc.strerror or exc})", path) from exc


def _glob(source: ResolvedSource, pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(source.root / pattern), recursive=True))


def _template(pattern: str, rel: Path) -> str:
    """Fill ``{stem}``, ``{name}``, ``{parent}`` and ``{rel}`` (relative path without suffix)."""
    name = rel.name
    stem = name
    for suffix in (*VOLUME_SUFFIXES, *IMAGE_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return pattern.format(stem=stem, name=name, parent=str(rel.parent), rel=str(rel.parent / stem))


def _map_class(source: ResolvedSource, native: str, where: str) -> str | None:
    """Canonical class for a native label; unknown labels are an error naming the file."""
    if native in source.class_map:
        return source.class_map[native]
    raise SourceReadError(
        f"unknown label {native!r} (source {source.name} maps {sorted(source.class_map) or 'no labels'})", where
    )


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("P", "PA", "LA", "CMYK", "YCbCr"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except FileNotFoundError as exc:
        raise SourceReadError("image file not found", path) from exc
    except Image.DecompressionBombError as exc:
        raise SourceReadError(f"image too large, refused as a possible decompression bomb ({exc})", path) from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise SourceReadError(f"cannot read image ({type(exc).__name__}: {exc})", path) from exc
    if array.ndim not in (2, 3) or array.size == 0:
        raise SourceReadError(f"unexpected image shape {array.shape}", path)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise SourceReadError("image has NaN or inf pixels", path)
    return array


def _checked_boxes(raw: list[Box], width: int, height: int, where: str, notes: list[dict]) -> list[Box]:
    """Apply :func:`check_box`; repaired or dropped boxes are recorded in ``notes`` (they go to the quarantine report)."""  # noqa: E501
    kept = []
    for box in raw:
        fixed, problem = check_box(box, width, height)
        if problem:
            notes.append({"input": str(where), "reason": problem, "action": "clipped" if fixed else "dropped"})
        if fixed is not None:
            kept.append(fixed)
    return kept


def _require_objects(boxes: list[Box], where: str, params: DataParams, what: str = "no objects") -> None:
    if not boxes and not params.keep_empty_images:
        raise SourceReadError(f"empty annotation: {what}", where)


# ---------------------------------------------------------------- volumes (NIfTI / DICOM + label volume)


def enumerate_volume(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    items, skipped = [], []
    pairs: list[tuple[Path, Path, str | None]] = []
    for case in source.spec.cases:
        pairs.append((source.path(case.image), source.path(case.label), case.patient))
    if source.spec.images:
        if not source.spec.labels:
            raise SourceReadError(f"source {source.name}: 'images' needs a 'labels' template", source.root)
        for image in _glob(source, source.spec.images):
            rel = image.relative_to(source.root)
            pairs.append((image, source.path(_template(source.spec.labels, rel)), None))
    for image, label, patient in pairs:
        with entry_guard(skipped, image):
            rel = str(image.relative_to(source.root)) if image.is_relative_to(source.root) else image.name
            item_id = safe_id(rel)
            if not label.exists():
                skipped.append(Skipped(str(image), f"no label volume: expected {label}"))
                continue
            items.append(Item(source.name, item_id, [str(image), str(label)], patient or _group(source, item_id)))
    return items, skipped


def _affines_match(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> bool:
    tol = 0.01 * max(min(spacing), 1e-3)
    return np.allclose(a[:3, :3], b[:3, :3], atol=tol) and np.allclose(
        a[:3, 3], b[:3, 3], atol=max(0.5 * min(spacing), 1e-3)
    )


def load_volume(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    from medrov.io.volume import read_volume, reorient

    image_path, label_path = Path(item.inputs[0]), Path(item.inputs[1])
    image = reorient(read_volume(image_path, params.max_volume_bytes))
    label = reorient(read_volume(label_path, params.max_volume_bytes))
    return volume_samples(source, image, label, params)


def volume_samples(
    source: ResolvedSource, image, label, params: DataParams, class_map: dict[str, str | None] | None = None
) -> tuple[list[Sample], list[dict]]:
    """Slices and boxes of an image volume and its label volume (both already read and reoriented).

    ``class_map`` (native id -> class) defaults to the source's; recipes that merge per-structure masks pass their own.
    """
    image_path, label_path = image.path, label.path
    class_map = source.class_map if class_map is None else class_map
    if image.array.shape != label.array.shape:
        raise SourceReadError(
            f"image/mask shape mismatch: image {image.array.shape} vs mask {label.array.shape} ({label_path.name})",
            image_path,
        )
    if not _affines_match(image.affine, label.affine, image.spacing):
        raise SourceReadError(
            f"image/mask affine mismatch with {label_path.name}: they are not on the same grid", image_path
        )
    lab = label.array
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
            raise SourceReadError("label volume has non-integer values", label_path)
        lab = lab.astype(np.int32)
    if lab.dtype.kind not in "iub":
        raise SourceReadError(f"label volume has unsupported type {lab.dtype}", label_path)
    # the same (x, y, z) -> (z, y, x) as the image slices, so slice k of the labels boxes slice k of the image
    lab = axial_stack(lab)
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise SourceReadError(f"negative label ids (min {int(lab.min())})", label_path)
    counts = np.bincount(lab.ravel())
    ids = np.flatnonzero(counts[1:]) + 1
    if ids.size == 0:
        raise SourceReadError("empty mask: the label volume has no foreground voxels", label_path)
    unknown = [int(i) for i in ids if str(int(i)) not in class_map]
    if unknown:
        shown = (
            f"{unknown}" if len(unknown) <= 10 else f"[{', '.join(map(str, unknown[:10]))}, ...] ({len(unknown)} ids)"
        )
        raise SourceReadError(f"unknown label ids {shown} (not in the label map of source {source.name})", label_path)
    ignored = [int(i) for i in ids if class_map[str(int(i))] is None]
    if ignored:
        lab = np.where(np.isin(lab, ignored), 0, lab)
    spec = source.spec
    # the one 3D -> 2D path, shared with predict: a model sees there the slices it was trained on
    # a user modality normalises like the catalogue kind it names (source.normalisation)
    pixels = volume_slices(
        image, source.normalisation, spec.ct_window or params.ct_window, spec.mri_percentiles or params.mri_percentiles
    )
    mode = spec.boxes or params.boxes
    skip_empty = params.skip_empty_slices if spec.skip_empty_slices is None else spec.skip_empty_slices
    sx, sy, sz = image.spacing
    boxes_by_slice = slice_boxes(lab, mode, params.connectivity, params.min_box_pixels)
    samples = []
    for k in range(lab.shape[0]):
        boxes = [Box(class_map[str(idx)], b.x0, b.y0, b.x1, b.y1) for idx, b in boxes_by_slice.get(k, [])]
        if skip_empty and not boxes:
            continue
        samples.append(Sample(f"_z{k:04d}", pixels[k], boxes, k, (sx, sy, sz)))
    if not samples and not params.keep_empty_images:
        raise SourceReadError(f"no slice has an object of size >= {params.min_box_pixels} px", label_path)
    return samples, []


# ---------------------------------------------------------------- 2D image + per-class binary masks


class _MaskFinder:
    """Finds the mask files of each image of one source; folder listings and real paths are computed once."""

    def __init__(self, source: ResolvedSource):
        self.source = source
        self.root = os.path.realpath(source.root)
        self.listings: dict[str, list[str]] = {}
        self._real_dirs: dict[str, str] = {}

    def pattern(self, rel: Path) -> str:
        """The absolute mask path of image ``rel`` with ``{class}`` left in place (every other placeholder filled)."""
        # doubled braces survive str.format, so {class} comes out literally
        filled = _template(self.source.spec.labels.replace("{class}", "{{class}}"), rel)
        return os.path.normpath(os.path.join(self.root, os.path.expanduser(filled)))

    def listing(self, folder: str) -> list[str]:
        if folder not in self.listings:
            try:
                self.listings[folder] = sorted(os.listdir(folder))
            except OSError:
                self.listings[folder] = []
        return self.listings[folder]

    def key(self, path: str | Path) -> str:
        """One name per file whatever the path it was reached by (the folder's symlinks resolved)."""
        folder, name = os.path.split(os.fspath(path))
        if folder not in self._real_dirs:
            self._real_dirs[folder] = os.path.realpath(folder)
        return os.path.join(self._real_dirs[folder], name)

    def candidates(self, pattern: str) -> list[tuple[str, str]]:
        """``(class token, path)`` of every file ``pattern`` matches with some token in place of ``{class}``."""
        folder, base = os.path.split(pattern)
        if "{class}" in folder or base.count("{class}") != 1:
            parts = pattern.split("{class}")
            # a token is one path component; a second {class} must repeat the first
            regex = re.compile(
                re.escape(parts[0])
                + "(?P<token>[^/]+)"
                + "".join(re.escape(p) + "(?P=token)" for p in parts[1:-1])
                + re.escape(parts[-1])
                + r"\Z"
            )
            found = (
                (m["token"], path) for path in glob.glob("*".join(map(glob.escape, parts))) if (m := regex.match(path))
            )
        else:
            prefix, suffix = base.split("{class}")
            names = self.listing(folder)
            # the names that start with this image's prefix are one run of the sorted listing: O(log n) per image
            start = end = bisect.bisect_left(names, prefix)
            while end < len(names) and names[end].startswith(prefix):
                end += 1
            found = (
                (name[len(prefix) : len(name) - len(suffix)], os.path.join(folder, name))
                for name in names[start:end]
                if name.endswith(suffix) and len(name) > len(prefix) + len(suffix)
            )
        return sorted((token, path) for token, path in found if os.path.isfile(path))


def _mask_target(source: ResolvedSource, token: str) -> tuple[bool, str | None, str]:
    """``(known, class or None, reason)`` for a mask's class token: ``classes:``/``label_map`` first, then (without
    ``classes:``) the vocabulary's names and synonyms; ``reason`` says why an unknown token is not used."""
    if token in source.class_map:
        return True, source.class_map[token], ""
    spec = source.spec
    if spec.classes:
        listed = ", ".join(spec.classes)
        mapped = f" nor in label_map ({', '.join(sorted(spec.label_map))})" if spec.label_map else ""
        return False, None, f"class {token!r} not in classes: [{listed}]{mapped}"
    found = source.vocabulary_index.get(normalise_name(token))
    if found is not None:
        return True, found, ""
    reason = f"class {token!r} is neither a vocabulary class nor in label_map: map it there (to a class, or to null)"
    return False, None, reason


def _no_mask_reason(source: ResolvedSource, pattern: str, finder: _MaskFinder) -> str:
    """Why an image has no mask: the template, the classes tried and example paths (expected and present)."""
    root = finder.root

    def short(path: str) -> str:  # relative to the source root: quarantine reasons are capped in length
        return os.path.relpath(path, root) if path.startswith(root + os.sep) else path

    tried = sorted(source.class_map) if source.spec.classes else []
    classes = f"classes tried: {', '.join(tried)}" if tried else "classes: any token, discovered from file names"
    expected = " or ".join(short(pattern.replace("{class}", t)) for t in (tried[:2] or ["<class>"]))
    folder = os.path.dirname(pattern)
    if "{class}" in folder:
        present = ""
    elif not os.path.isdir(folder):
        present = f"; folder {short(folder)} does not exist"
    else:
        names = finder.listing(folder)
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        present = f"; {short(folder)}/ holds {len(names)} file(s){': ' + shown if names else ''}"
    return f"no mask file matches {source.spec.labels!r} ({classes}; looked for {expected}{present})"


def _unclaimed_masks(source: ResolvedSource, finder: _MaskFinder, known: set[str]) -> list[str]:
    """Files the labels template could name (every placeholder a wildcard) that are no image's mask nor an image."""
    pattern = re.sub(r"\{(stem|name|class)\}", "*", source.spec.labels)
    pattern = re.sub(r"\{(parent|rel)\}", "**", pattern)
    return [str(p) for p in _glob(source, pattern) if finder.key(p) not in known and p.is_file()]


def enumerate_mask2d(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    """Images and their per-class masks; every mask file the template matches is used or gets its own row.

    Masks are found by the ``{class}`` template whatever their token; a token that is no class (not in
    ``classes:``/``label_map`` or, without ``classes:``, not a vocabulary name) is a ``mask``-level quarantine
    row, and so is a mask mapped to null. An image with no usable mask is quarantined saying why.
    """
    spec = source.spec
    if not spec.images or not spec.labels or "{class}" not in spec.labels:
        raise SourceReadError(
            f"source {source.name}: mask2d needs 'images' (glob) and 'labels' with a {{class}} placeholder", source.root
        )
    finder = _MaskFinder(source)
    images = _glob(source, spec.images)
    patterns: dict[Path, str] = {}
    claims: dict[str, list[tuple[int, Path, str]]] = {}
    skipped: list[Skipped] = []
    for image in images:
        with entry_guard(skipped, image):
            patterns[image] = finder.pattern(image.relative_to(source.root))
            itself = finder.key(image)  # with labels "{class}/{stem}.png" an image matches its own template
            for token, path in finder.candidates(patterns[image]):
                if finder.key(path) != itself:
                    claims.setdefault(path, []).append((len(token), image, token))
    # a file two images match ("a_b_liver.png" for images "a" and "a_b") belongs to the longest stem (shortest
    # token); an image with masks of its own is an image, even if another image's template names it ("a_b.png"
    # for image "a"); any other image file that some image's template names is a mask (one folder for both)
    owner: dict[str, tuple[Path, str]] = {}
    lost: dict[Path, list[tuple[str, Path]]] = {}
    for path, claimants in claims.items():
        _, image, token = min(claimants, key=lambda c: (c[0], str(c[1])))
        owner[path] = (image, token)
        for _, other, _ in claimants:
            if other != image:
                lost.setdefault(other, []).append((path, image))
    with_masks = {finder.key(image) for image, _ in owner.values()}
    masks_of: dict[Path, dict[str, str]] = {}
    for path, (image, token) in owner.items():
        if finder.key(path) not in with_masks:
            masks_of.setdefault(image, {})[token] = path
    claimed = {finder.key(p) for masks in masks_of.values() for p in masks.values()}
    orphan = f"mask of no image: no image of {spec.images!r} names this file through {spec.labels!r}"
    taken = claimed | {finder.key(i) for i in images}
    skipped.extend(Skipped(path, orphan, "mask") for path in _unclaimed_masks(source, finder, taken))
    items: list[Item] = []
    tokens: Counter[tuple[str, str]] = Counter()
    merged: dict[str, set[str]] = {}
    discovered: dict[str, str] = {}
    for image in images:
        if image not in patterns or finder.key(image) in claimed:
            continue
        with entry_guard(skipped, image):
            masks = masks_of.get(image, {})
            if not masks and image in lost:
                path, winner = lost[image][0]
                reason = (
                    f"no mask of its own: {spec.labels!r} names {os.path.basename(path)}, which is taken as the mask "
                    f"of {winner.relative_to(source.root)} (a longer or equal stem; give each image its own mask "
                    "name, e.g. with {rel} or {parent})"
                )
                skipped.append(Skipped(str(image), reason))
                continue
            if not masks:
                skipped.append(Skipped(str(image), _no_mask_reason(source, patterns[image], finder)))
                continue
            used: dict[str, str] = {}
            targets: dict[str, str | None] = {}
            for token, path in sorted(masks.items()):
                known, target, reason = _mask_target(source, token)
                tokens[(token, target if known else "?")] += 1
                if not known:
                    skipped.append(Skipped(path, f"{reason} (mask of {image.name})", level="mask"))
                elif target is None:
                    skipped.append(
                        Skipped(path, f"label_map maps {token!r} to null (mask of {image.name})", "mask", "ignored")
                    )
                else:
                    used[token], targets[token] = path, target
                    if token not in source.class_map:
                        discovered[token] = target
            if not used:
                nulls = sum(1 for t in masks if _mask_target(source, t)[:2] == (True, None))
                reason = (
                    f"every mask maps to null ({', '.join(sorted(masks))}): nothing to box"
                    if nulls == len(masks)
                    else f"no mask of a usable class: {len(masks) - nulls} of its {len(masks)} mask(s) have a class "
                    f"token that is not a class, {nulls} map to null (see their rows)"
                )
                skipped.append(Skipped(str(image), reason))
                continue
            for target in set(targets.values()):
                group = {t for t, c in targets.items() if c == target}
                if len(group) > 1:
                    merged.setdefault(target, set()).update(group)
            item_id = safe_id(str(image.relative_to(source.root)))
            items.append(
                Item(
                    source.name,
                    item_id,
                    [str(image), *used.values()],
                    _group(source, item_id),
                    {"masks": used, "targets": targets},
                )
            )
    # discovered classes join the source's label map, so its presence row marks them annotated (M = 1); this
    # runs in the main process before any item is handed to a worker
    source.class_map.update(discovered)
    if tokens:
        shown = ", ".join(
            f"{token} x{n} -> {'not a class (quarantined)' if target == '?' else target or 'null'}"
            for (token, target), n in sorted(tokens.items(), key=lambda kv: kv[0][0])
        )
        log.info("%s: mask class tokens matched by %r: %s", source.name, spec.labels, shown)
    if merged:
        log.info(
            "%s: masks of one class are merged (logical OR) before boxes: %s",
            source.name,
            "; ".join(f"{' + '.join(sorted(group))} -> {target}" for target, group in sorted(merged.items())),
        )
    return items, skipped


def _binary_mask(mask: np.ndarray, connectivity: int, min_pixels: int) -> tuple[np.ndarray, bool, int]:
    """Foreground of a mask: ``(mask, binarised, speckles removed)``.

    A binary mask (values 0 and one other) is foreground where nonzero. Any other (JPEG-compressed: values around
    the edges between 0 and max) is cut at half its value range, and the connected specks smaller than
    ``min_pixels`` that compression leaves are removed.
    """
    from scipy import ndimage

    low, high = mask.min(), mask.max()
    if low == high or not np.any((mask != 0) & (mask != high)):
        return mask > 0, False, 0
    foreground = mask > (float(low) + float(high)) / 2
    if min_pixels <= 1:
        return foreground, True, 0
    components, _ = ndimage.label(foreground, structure=ndimage.generate_binary_structure(2, connectivity))
    small = np.bincount(components.ravel()) < min_pixels
    small[0] = False
    foreground &= ~small[components]
    return foreground, True, int(small.sum())


def load_mask2d(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    """One image and its boxes; the masks of one class are OR-ed first, so no class gets a box twice."""
    image_path = Path(item.inputs[0])
    pixels = to_uint8_image(_read_image(image_path), params.mri_percentiles)
    height, width = pixels.shape[:2]
    mode = source.spec.boxes or params.boxes
    targets = item.spec.get("targets") or {t: source.class_map[t] for t in item.spec["masks"]}
    union: dict[str, np.ndarray] = {}
    members: dict[str, list[tuple[str, bool]]] = {}
    stats = {"masks_merged": 0, "masks_binarised": 0, "speckles_removed": 0}
    for native, mask_file in item.spec["masks"].items():
        mask = _read_image(Path(mask_file))
        if mask.ndim == 3:
            # colour masks: foreground is any non-black colour; an alpha channel is opacity, not foreground
            mask = mask[..., :3].max(axis=2)
        if mask.shape != (height, width):
            raise SourceReadError(f"image/mask shape mismatch: image {(height, width)} vs mask {mask.shape}", mask_file)
        foreground, binarised, specks = _binary_mask(mask, params.connectivity, params.min_box_pixels)
        stats["masks_binarised"] += int(binarised)
        stats["speckles_removed"] += specks
        target = targets[native]
        union[target] = foreground if target not in union else union[target] | foreground
        members.setdefault(target, []).append((mask_file, bool(foreground.any())))
    boxes: list[Box] = []
    notes: list[dict] = []
    for target, foreground in union.items():
        if len(members[target]) > 1:
            stats["masks_merged"] += len(members[target])
        found = mask_to_boxes(foreground.astype(np.uint8), mode, params.connectivity, params.min_box_pixels)
        boxes.extend(Box(target, b.x0, b.y0, b.x1, b.y1) for _, b in found)
        for mask_file, any_foreground in members[target]:
            if not any_foreground or not found:
                reason = (
                    "mask is empty: no foreground pixels"
                    if not any_foreground
                    else f"no foreground component of >= {params.min_box_pixels} px (data.min_box_pixels)"
                )
                notes.append({"input": mask_file, "level": "mask", "action": "empty", "reason": reason})
    some_foreground = any(seen for files in members.values() for _, seen in files)
    why = f"no mask has a component of >= {params.min_box_pixels} px (data.min_box_pixels)"
    _require_objects(boxes, item.inputs[0], params, why if some_foreground else "every mask is empty")
    return [Sample("", pixels, boxes, stats=stats)], notes


# ---------------------------------------------------------------- Pascal VOC XML


def _voc_image(source: ResolvedSource, xml_path: Path, filename: str | None) -> Path:
    images_dir = source.path(source.spec.images or "JPEGImages")
    if filename:
        candidate = confined(source, images_dir / filename, filename, xml_path)
        if candidate.exists():
            return candidate
    for suffix in IMAGE_SUFFIXES:
        candidate = images_dir / f"{xml_path.stem}{suffix}"
        if candidate.exists():
            return candidate
    return images_dir / (filename or f"{xml_path.stem}.jpg")


def _imagesets(source: ResolvedSource) -> dict[str, str]:
    split_of = {}
    folder = source.root / "ImageSets" / "Main"
    for split in ("train", "val", "test"):
        file = folder / f"{split}.txt"
        if file.exists():
            try:
                text = file.read_text()
            except UnicodeDecodeError as exc:
                raise SourceReadError(f"split list is not UTF-8 text ({exc.reason} at byte {exc.start})", file) from exc
            for line in text.split():
                split_of[line.strip()] = split
    return split_of


def enumerate_voc(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    ann_dir = source.path(source.spec.annotations or "Annotations")
    items, skipped = [], []
    split_of = _imagesets(source) if source.spec.split == "imagesets" else {}
    seen_images = set()
    for xml_path in sorted(ann_dir.glob("*.xml")):
        with entry_guard(skipped, xml_path):
            try:
                filename = (parse_xml(xml_path).findtext("filename") or "").strip() or None
            except SourceReadError:
                filename = None  # the entry stays one item: load_voc quarantines it with the parser's reason
            image = _voc_image(source, xml_path, filename)
            seen_images.add(image.resolve())
            confined(source, image, image.name, xml_path)
            item_id = safe_id(xml_path.stem)
            split = split_of.get(xml_path.stem) if split_of else None
            if split_of and split is None:
                skipped.append(Skipped(str(xml_path), "not listed in any ImageSets/Main split file"))
                continue
            items.append(Item(source.name, item_id, [str(image), str(xml_path)], _group(source, item_id), split=split))
    images_dir = source.path(source.spec.images or "JPEGImages")
    for image in sorted(images_dir.glob("*")) if images_dir.is_dir() else []:
        if image.suffix.lower() in IMAGE_SUFFIXES and image.resolve() not in seen_images:
            skipped.append(Skipped(str(image), "image has no annotation XML"))
    return items, skipped


def load_voc(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    image_path, xml_path = Path(item.inputs[0]), item.inputs[1]
    root = parse_xml(xml_path)
    pixels = to_uint8_image(_read_image(image_path), params.mri_percentiles)
    height, width = pixels.shape[:2]
    raw = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        target = _map_class(source, name, xml_path)
        bnd = obj.find("bndbox")
        if bnd is None:
            raise SourceReadError(f"object {name!r} has no bndbox", xml_path)
        try:
            xmin, ymin, xmax, ymax = (float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise SourceReadError(f"object {name!r} has a non-numeric bndbox", xml_path) from exc
        if target is None:
            continue
        if xmax <= xmin or ymax <= ymin:
            # a point or inverted box in the annotation itself (BCCD has two): keep it degenerate so it is reported
            raw.append(Box(target, xmin, ymin, xmax, ymax))
        else:
            # VOC coordinates are 1-based inclusive pixel indices: edges are (xmin - 1, xmax)
            raw.append(Box(target, xmin - 1, ymin - 1, xmax, ymax))
    notes: list[dict] = []
    boxes = _checked_boxes(raw, width, height, xml_path, notes)
    _require_objects(boxes, xml_path, params)
    return [Sample("", pixels, boxes)], notes


# ---------------------------------------------------------------- COCO JSON


def enumerate_coco(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    ann_file = source.path(source.spec.annotations or "annotations.json")
    try:
        data = json.loads(ann_file.read_text())
        categories = {str(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        entries = list(data["images"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SourceReadError(f"cannot read COCO JSON ({type(exc).__name__}: {exc})", ann_file) from exc
    skipped: list[Skipped] = []
    images: dict[int, dict] = {}
    for index, meta in enumerate(entries):
        with entry_guard(skipped, f"{ann_file}#images[{index}]"):
            images[int(meta["id"])] = meta
    per_image: dict[int, list[dict]] = {i: [] for i in images}
    for index, ann in enumerate(data.get("annotations", [])):
        with entry_guard(skipped, f"{ann_file}#annotations[{index}]"):
            image_id = ann.get("image_id")
            if image_id not in per_image:
                skipped.append(
                    Skipped(f"{ann_file}#annotation{ann.get('id')}", f"refers to unknown image id {image_id}")
                )
                continue
            per_image[image_id].append(
                # an unknown or malformed category id stays as its text: the image is then quarantined naming it
                {
                    "category": categories.get(str(ann.get("category_id")), str(ann.get("category_id"))),
                    "bbox": ann.get("bbox"),
                }
            )
    images_dir = source.path(source.spec.images or "images")
    items = []
    for image_id, meta in sorted(images.items()):
        file_name = str(meta.get("file_name", ""))
        with entry_guard(skipped, images_dir / file_name):
            path = confined(source, images_dir / file_name, file_name, ann_file)
            item_id = safe_id(file_name)
            spec = {"annotations": per_image[image_id], "width": meta.get("width"), "height": meta.get("height")}
            items.append(Item(source.name, item_id, [str(path)], _group(source, item_id), spec))
    return items, skipped


def load_coco(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    image_path = Path(item.inputs[0])
    pixels = to_uint8_image(_read_image(image_path), params.mri_percentiles)
    height, width = pixels.shape[:2]
    declared = (item.spec.get("width"), item.spec.get("height"))
    if all(declared) and (int(declared[0]), int(declared[1])) != (width, height):
        raise SourceReadError(f"COCO says {declared[0]}x{declared[1]} but the image is {width}x{height}", image_path)
    raw = []
    for ann in item.spec["annotations"]:
        target = _map_class(source, ann["category"], str(image_path))
        bbox = ann["bbox"]
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise SourceReadError(f"annotation bbox {bbox!r} is not [x, y, w, h]", image_path)
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError) as exc:
            raise SourceReadError(f"annotation bbox {bbox!r} is not four numbers", image_path) from exc
        if target is not None:
            raw.append(Box(target, x, y, x + w, y + h))
    notes: list[dict] = []
    boxes = _checked_boxes(raw, width, height, str(image_path), notes)
    _require_objects(boxes, str(image_path), params)
    return [Sample("", pixels, boxes)], notes


# ---------------------------------------------------------------- CSV of boxes


def enumerate_csv(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    csv_file = source.path(source.spec.annotations or "boxes.csv")
    cols = source.spec.csv_columns
    rows_by_image: dict[str, list[dict]] = {}
    skipped = []
    try:
        with open(csv_file, newline="") as fh:
            reader = csv.DictReader(fh)
            needed = {cols.image, cols.label, cols.x0, cols.y0, cols.x1, cols.y1}
            missing = needed - set(reader.fieldnames or [])
            if missing:
                raise SourceReadError(f"CSV lacks columns {sorted(missing)}", csv_file)
            for line_no, row in enumerate(reader, start=2):
                if not row.get(cols.image):
                    skipped.append(Skipped(f"{csv_file}:{line_no}", "row has no image name"))
                    continue
                rows_by_image.setdefault(row[cols.image], []).append(
                    {
                        "line": line_no,
                        "label": row[cols.label],
                        "coords": [row[cols.x0], row[cols.y0], row[cols.x1], row[cols.y1]],
                    }
                )
    except OSError as exc:
        raise SourceReadError(f"cannot read CSV ({exc})", csv_file) from exc
    except UnicodeDecodeError as exc:
        raise SourceReadError(f"CSV is not UTF-8 text ({exc.reason} at byte {exc.start})", csv_file) from exc
    images_dir = source.path(source.spec.images or ".")
    items = []
    for name, rows in sorted(rows_by_image.items()):
        with entry_guard(skipped, images_dir / name):
            path = confined(source, images_dir / name, name, f"{csv_file}:{rows[0]['line']}")
            item_id = safe_id(name)
            items.append(
                Item(source.name, item_id, [str(path)], _group(source, item_id), {"rows": rows, "csv": str(csv_file)})
            )
    return items, skipped


def load_csv(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    image_path = Path(item.inputs[0])
    pixels = to_uint8_image(_read_image(image_path), params.mri_percentiles)
    height, width = pixels.shape[:2]
    raw = []
    where = item.spec["csv"]
    for row in item.spec["rows"]:
        target = _map_class(source, row["label"], f"{where}:{row['line']}")
        try:
            a, b, c, d = (float(v) for v in row["coords"])
        except (TypeError, ValueError) as exc:
            raise SourceReadError(f"line {row['line']}: non-numeric box {row['coords']}", where) from exc
        if target is not None:
            raw.append(Box(target, a, b, a + c, b + d) if source.spec.csv_box == "xywh" else Box(target, a, b, c, d))
    notes: list[dict] = []
    boxes = _checked_boxes(raw, width, height, str(image_path), notes)
    _require_objects(boxes, str(image_path), params)
    return [Sample("", pixels, boxes)], notes


# ---------------------------------------------------------------- existing YOLO txt


def enumerate_yolo(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    pattern = source.spec.images or "images/**/*"
    labels = source.spec.labels or "labels/{stem}.txt"
    items, skipped = [], []
    for image in _glob(source, pattern):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        with entry_guard(skipped, image):
            rel = image.relative_to(source.root)
            label = source.path(_template(labels, rel))
            if not label.exists():
                skipped.append(Skipped(str(image), f"no YOLO label file: expected {label}"))
                continue
            item_id = safe_id(str(rel))
            items.append(Item(source.name, item_id, [str(image), str(label)], _group(source, item_id)))
    return items, skipped


def load_yolo(source: ResolvedSource, item: Item, params: DataParams) -> tuple[list[Sample], list[dict]]:
    image_path, label_path = Path(item.inputs[0]), item.inputs[1]
    pixels = to_uint8_image(_read_image(image_path), params.mri_percentiles)
    height, width = pixels.shape[:2]
    names = source.spec.classes
    raw = []
    try:
        text = Path(label_path).read_text()
    except UnicodeDecodeError as exc:
        raise SourceReadError(f"label file is not UTF-8 text ({exc.reason} at byte {exc.start})", label_path) from exc
    except OSError as exc:
        raise SourceReadError(f"cannot read label file ({exc.strerror or exc})", label_path) from exc
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            cls, xc, yc, bw, bh = int(parts[0]), *(float(v) for v in parts[1:5])
        except (ValueError, IndexError) as exc:
            raise SourceReadError(
                f"line {line_no}: expected 'class xc yc w h', got {line.strip()!r}", label_path
            ) from exc
        if len(parts) != 5:
            raise SourceReadError(f"line {line_no}: expected 5 numbers, got {len(parts)}", label_path)
        if not 0 <= cls < len(names):
            raise SourceReadError(
                f"line {line_no}: unknown class id {cls} (source lists {len(names)} classes)", label_path
            )
        target = _map_class(source, names[cls], label_path)
        if target is not None:
            raw.append(
                Box(
                    target, (xc - bw / 2) * width, (yc - bh / 2) * height, (xc + bw / 2) * width, (yc + bh / 2) * height
                )
            )
    notes: list[dict] = []
    boxes = _checked_boxes(raw, width, height, label_path, notes)
    _require_objects(boxes, label_path, params)
    return [Sample("", pixels, boxes)], notes


ADAPTERS = {
    "volume": (enumerate_volume, load_volume),
    "mask2d": (enumerate_mask2d, load_mask2d),
    "voc": (enumerate_voc, load_voc),
    "coco": (enumerate_coco, load_coco),
    "csv": (enumerate_csv, load_csv),
    "yolo": (enumerate_yolo, load_yolo),
}
