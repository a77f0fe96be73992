"""Inference on new inputs: 2D pictures, NIfTI volumes and DICOM series, one JSON and overlay PNGs per input.

Volumes go through exactly the reader, reorientation and intensity normalisation of ``convert``, so the
detector sees slices like those it was trained on, and slice ``k`` here is slice ``k`` of the converted data.
Boxes found on adjacent axial slices are linked into 3D boxes by :func:`link_boxes_3d`.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medrov.catalog import VOLUME_MODALITIES
from medrov.config import DataParams
from medrov.data.adapters import IMAGE_SUFFIXES, VOLUME_SUFFIXES, _read_image, safe_id
from medrov.data.normalise import to_uint8_image
from medrov.data.slicing import volume_slices
from medrov.errors import ConfigError, SourceReadError
from medrov.model.overlays import MONTAGE_SLICES, draw_overlay, montage, sample_slices
from medrov.model.record import Normalisation, sha256_file

log = logging.getLogger("medrov.predict")

# a NIfTI volume with values below this is taken as CT in Hounsfield units (air is -1000 HU, MRI is >= 0)
HU_LIKE_BELOW = -200.0
DICOM_PREAMBLE_END = 132
# what convert uses when params.yaml says nothing: the defaults of the data section, declared once in config.py
DEFAULT_CT_WINDOW: tuple[float, float] = DataParams.model_fields["ct_window"].default
DEFAULT_MRI_PERCENTILES: tuple[float, float] = DataParams.model_fields["mri_percentiles"].default


@dataclass
class Frame:
    """One 2D image to detect on: a picture (``slice_index`` None) or axial slice ``slice_index`` of a volume."""

    name: str
    slice_index: int | None
    image: np.ndarray
    source_path: Path
    modality: str | None = None


@dataclass
class InputFile:
    """One input found under the given path, before it is read; ``name`` is the stem of its output files."""

    name: str
    path: Path
    kind: str  # "image", "nifti" or "dicom"


# ---------------------------------------------------------------- finding and reading inputs


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(DICOM_PREAMBLE_END)
    except OSError:
        return False
    return head[128:DICOM_PREAMBLE_END] == b"DICM"


def _is_series_dir(folder: Path) -> bool:
    """A folder holding DICOM files directly is one series (its subfolders belong to it, as the reader does)."""
    return any(p.is_file() and not p.name.startswith(".") and _is_dicom_file(p) for p in folder.iterdir())


def _file_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    if name.endswith(".dcm"):
        return "dicom"
    return None


def _collect(folder: Path, root: Path, found: list[InputFile]) -> None:
    for child in sorted(folder.iterdir()):
        if child.name.startswith("."):
            continue
        rel = child.relative_to(root).as_posix()
        if child.is_dir():
            if _is_series_dir(child):
                found.append(InputFile(safe_id(rel), child, "dicom"))
            else:
                _collect(child, root, found)
        elif _file_kind(child) in ("image", "nifti"):
            found.append(InputFile(safe_id(rel), child, _file_kind(child)))


def _unique_names(inputs: list[InputFile]) -> list[InputFile]:
    """``a.png`` and ``a.nii.gz`` share the stem ``a``: later ones get ``-2``, ``-3``... so no output is overwritten."""
    used: set[str] = set()
    for item in inputs:
        base, count = item.name, 1
        while item.name in used:
            count += 1
            item.name = f"{base}-{count}"
        used.add(item.name)
    return inputs


def discover_inputs(path: str | Path) -> list[InputFile]:
    """The inputs a path names: itself (a picture, a NIfTI file, a DICOM file or series folder) or a folder's content.

    Raises:
        SourceReadError: the path does not exist, has an unknown format, or a folder holds no input.
    """
    path = Path(path)
    if not path.exists():
        raise SourceReadError("file not found", path)
    if path.is_file():
        kind = _file_kind(path) or ("dicom" if _is_dicom_file(path) else None)
        if kind is None:
            raise SourceReadError(
                f"unknown input format (expected {', '.join(IMAGE_SUFFIXES + VOLUME_SUFFIXES)}, .dcm or a DICOM folder)",  # noqa: E501
                path,
            )
        return [InputFile(safe_id(path.name), path, kind)]
    if _is_series_dir(path):
        return [InputFile(safe_id(path.name), path, "dicom")]
    found: list[InputFile] = []
    _collect(path, path, found)
    if not found:
        raise SourceReadError("no picture, NIfTI file or DICOM series in the folder", path)
    return _unique_names(found)


def _volume_modality(volume, requested: str) -> str:
    """The normalisation a volume gets: as requested, else its DICOM Modality tag, else HU-like values mean CT."""
    if requested != "auto":
        return requested
    tag = str(volume.meta.get("modality", "")).upper()
    if tag in ("CT", "MR"):
        return "ct" if tag == "CT" else "mri"
    return "ct" if float(np.min(volume.array)) < HU_LIKE_BELOW else "mri"


def _volume_frames(item: InputFile, modality: str, ct_window, mri_percentiles) -> list[Frame]:
    from medrov.io.volume import read_dicom_series, read_nifti

    # by kind, not suffix: a DICOM file found by its preamble may have no .dcm suffix
    volume = (read_nifti if item.kind == "nifti" else read_dicom_series)(item.path)
    chosen = _volume_modality(volume, modality)
    # convert's own 3D -> 2D path: slice k here is slice k of the converted training data
    pixels = volume_slices(volume, chosen, tuple(ct_window), tuple(mri_percentiles))
    if pixels.shape[0] == 0:
        raise SourceReadError("volume has no slices", item.path)
    return [Frame(item.name, k, pixels[k], item.path, chosen) for k in range(pixels.shape[0])]


def _read_picture(path: Path) -> np.ndarray:
    try:
        return _read_image(path)
    except ImportError as exc:
        # once ultralytics is imported, PIL's open tries to import pi_heif for any file it cannot identify
        raise SourceReadError(f"cannot read image (unidentified format; {type(exc).__name__}: {exc})", path) from exc


def _load(item: InputFile, modality: str, ct_window, mri_percentiles) -> list[Frame]:
    if item.kind == "image":
        return [Frame(item.name, None, to_uint8_image(_read_picture(item.path), tuple(mri_percentiles)), item.path)]
    return _volume_frames(item, modality, ct_window, mri_percentiles)


def _check_modality(modality: str) -> str:
    value = str(modality).strip().lower()
    if value != "auto" and value not in VOLUME_MODALITIES:
        raise ConfigError(f"modality {modality!r} is not one of {['auto', *VOLUME_MODALITIES]}")
    return value


def load_inputs(
    path: str | Path,
    modality: str = "auto",
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW,
    mri_percentiles: tuple[float, float] = DEFAULT_MRI_PERCENTILES,
) -> list[Frame]:
    """Read a picture, a NIfTI file, a DICOM series (folder or one of its files) or a folder of them into frames.

    Args:
        path: the input, or a folder searched recursively (a subfolder holding DICOM files is one series).
        modality: ``auto``, ``ct`` or ``mri``: the intensity normalisation of volumes. ``auto`` uses the DICOM
            Modality tag, else calls a volume CT when it has HU-like values (below -200).
        ct_window: HU window mapped to 0..255 for CT.
        mri_percentiles: percentiles of the volume mapped to 0..255 for MRI (and for pictures deeper than 8 bit).

    Returns:
        One frame per picture and per axial slice of each volume, uint8 (H, W) grey or (H, W, 3) RGB.

    Raises:
        SourceReadError: an input is missing, unreadable or corrupt (the message names the file and why).
        ConfigError: ``modality`` is not ``auto``, ``ct`` or ``mri``.
    """
    modality = _check_modality(modality)
    frames: list[Frame] = []
    for item in discover_inputs(path):
        frames.extend(_load(item, modality, ct_window, mri_percentiles))
    return frames


# ---------------------------------------------------------------- 2D boxes -> 3D boxes


def _ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) IoU of xyxy boxes by torchvision; 0 where both boxes are empty (torchvision gives NaN there)."""
    import torch
    from torchvision.ops import box_iou

    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ious = box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))
    return np.nan_to_num(ious.numpy())


@dataclass
class _Track:
    label: str
    last_box: np.ndarray
    union: np.ndarray
    score: float
    first: int
    last: int
    n_slices: int = 1

    def extend(self, k: int, box: np.ndarray, score: float) -> None:
        self.union = np.concatenate([np.minimum(self.union[:2], box[:2]), np.maximum(self.union[2:], box[2:])])
        self.last_box, self.last, self.score = box, k, max(self.score, score)
        self.n_slices += 1

    def to_json(self) -> dict[str, Any]:
        x0, y0, x1, y1 = (round(float(v), 1) for v in self.union)
        return {
            "label": self.label,
            "score": round(self.score, 4),
            "slices": [self.first, self.last],
            "box": [x0, y0, self.first, x1, y1, self.last + 1],
            "n_slices": self.n_slices,
        }


def _match_slice(tracks: list[_Track], k: int, det, iou_threshold: float, max_gap: int) -> None:
    """Extend open tracks with this slice's boxes, best score first; a box no track takes starts a new track."""
    open_tracks = [t for t in tracks if 0 < k - t.last <= max_gap + 1]
    taken: set[int] = set()
    # a track's last box changes only when this slice extends it, and then it is taken: IoUs computed once hold
    ious = _ious(
        np.asarray(det.boxes, dtype=np.float64).reshape(-1, 4),
        np.asarray([t.last_box for t in open_tracks], dtype=np.float64).reshape(-1, 4),
    )
    for i in np.argsort(-np.asarray(det.scores, dtype=np.float64), kind="stable"):
        box, score, label = np.asarray(det.boxes[i], dtype=np.float64), float(det.scores[i]), det.names[i]
        candidates = [(float(ious[i, j]), j) for j, t in enumerate(open_tracks) if j not in taken and t.label == label]
        best = max(candidates, default=(0.0, -1))
        if best[1] >= 0 and best[0] >= iou_threshold:
            taken.add(best[1])
            open_tracks[best[1]].extend(k, box, score)
        else:
            tracks.append(_Track(label, box, box.copy(), score, k, k))


def link_boxes_3d(per_slice: Sequence[tuple[int, Any]], iou_threshold: float = 0.3, max_gap: int = 1) -> list[dict]:
    """Link 2D boxes of the same label on nearby axial slices into 3D boxes.

    Slices are visited in order; each box (highest score first) extends the open track of its label whose box on
    the track's latest slice overlaps it most, if that IoU is at least ``iou_threshold``; a track stays open for
    ``max_gap`` slices without a box. A track takes at most one box per slice.

    Args:
        per_slice: ``(slice_index, Detections)`` pairs (any order, boxes in pixels x0, y0, x1, y1).
        iou_threshold: minimum 2D IoU between a box and the track's latest box.
        max_gap: how many slices in a row may miss the object before the track ends (0: consecutive slices only).

    Returns:
        3D boxes, highest score first: ``label``, ``score`` (max over the slices), ``slices`` [first, last],
        ``box`` [x0, y0, z0, x1, y1, z1] (x/y the union of the 2D boxes, z1 = last + 1, exclusive) and
        ``n_slices`` (slices with a box in the track).
    """
    tracks: list[_Track] = []
    for k, det in sorted(per_slice, key=lambda pair: pair[0]):
        _match_slice(tracks, int(k), det, iou_threshold, max_gap)
    return [t.to_json() for t in sorted(tracks, key=lambda t: (-t.score, t.label, t.first))]


# ---------------------------------------------------------------- predict and write


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


_FROM = {"weights": "recorded with the weights", "params": "params.yaml", "default": "default"}


def _normalisation_used(frame: Frame, normalisation: Normalisation) -> str:
    """One line saying how the input's pixels were scaled (the montage footer, the JSON)."""
    if frame.slice_index is None:
        return "picture: 8-bit as is, deeper ones scaled to the mri_percentiles"
    if frame.modality == "ct":
        low, high = normalisation.ct_window
        origin = _FROM.get(normalisation.ct_window_from, "--window")
        return f"CT window [{low:g}, {high:g}] HU ({origin})"
    low, high = normalisation.mri_percentiles
    origin = _FROM.get(normalisation.mri_percentiles_from, "--percentiles")
    return f"{frame.modality}: volume percentiles [{low:g}, {high:g}] ({origin})"


def _write_montage(frames: list[Frame], dets: list, path: Path, footer: str, n: int) -> Path:
    """Sampled slices of a volume with their boxes, so its windowing can be seen even where nothing was found."""
    picked = sample_slices(len(frames), n)
    tiles = [draw_overlay(frames[k].image, dets[k]) for k in picked]
    captions = [f"slice {frames[k].slice_index} of {len(frames)}: {len(dets[k].names)} boxes" for k in picked]
    montage(tiles, captions, footer).save(path)
    return path


def _predict_input(
    detector,
    frames: list[Frame],
    out: Path,
    imgsz: int,
    conf: float,
    provenance: dict[str, Any],
    normalisation: Normalisation,
    montage_slices: int,
) -> tuple[dict, list[Path], list[Path]]:
    """Detect on one input's frames; write its overlays (and a volume's montage); return its JSON payload, the
    overlay files and the montage files."""
    dets = detector.predict([f.image for f in frames], imgsz=imgsz, conf=conf)
    first = frames[0]
    is_volume = first.slice_index is not None
    used = _normalisation_used(first, normalisation)
    payload: dict[str, Any] = {
        "input": str(first.source_path),
        "prompts": list(detector.vocabulary),
        **provenance,
        "normalisation": {**normalisation.to_json(), "used": used},
        "imgsz": imgsz,
        "conf": conf,
        "modality": first.modality,
        "frames": [{"slice_index": f.slice_index, "boxes": d.to_json()} for f, d in zip(frames, dets)],
    }
    overlays, montages = [], []
    # slices of an earlier run that have no detection now must not keep an overlay that contradicts the JSON
    for stale in out.glob(f"{glob.escape(first.name)}_slice[0-9][0-9][0-9]*.png") if is_volume else []:
        stale.unlink()
    for frame, det in zip(frames, dets):
        if is_volume and not len(det.names):
            continue
        name = f"{frame.name}_slice{frame.slice_index:03d}.png" if is_volume else f"{frame.name}.png"
        draw_overlay(frame.image, det).save(out / name)
        overlays.append(out / name)
    if is_volume:
        payload["boxes_3d"] = link_boxes_3d([(f.slice_index, d) for f, d in zip(frames, dets)])
        if montage_slices > 0:
            montages.append(_write_montage(frames, dets, out / f"{first.name}_montage.png", used, montage_slices))
            payload["montage"] = str(montages[-1])
    return payload, overlays, montages


def describe_weights(detector, model: str | None = None) -> dict[str, Any]:
    """The weights a prediction used: the file, its sha256 and the model URI it came from (when one)."""
    weights = Path(detector.weights)
    described: dict[str, Any] = {"path": str(weights), "sha256": sha256_file(weights)}
    if model and model != str(weights):
        described["model"] = model
    return described


def describe_encoder(detector, check: str | None = None) -> dict[str, Any] | None:
    """The text encoder the prompts were embedded with (None for a closed-set model), and how it was checked
    against the one the weights were trained with."""
    prompter = getattr(detector, "prompter", None)
    if not detector.open_vocabulary or prompter is None:
        return None
    described = dict(prompter.describe())
    recorded = (getattr(detector, "record", None) or {}).get("encoder")
    described["trained_with"] = recorded.get("identity") if recorded else None
    if check:
        described["check"] = check
    return described


def predict_path(
    detector,
    path: str | Path,
    prompts: Sequence[str],
    out_dir: str | Path,
    imgsz: int = 640,
    conf: float = 0.25,
    modality: str = "auto",
    normalisation: Normalisation | None = None,
    encoder_check: str | None = None,
    model: str | None = None,
    montage_slices: int = MONTAGE_SLICES,
) -> dict[str, Any]:
    """Detect ``prompts`` on every input under ``path``; write ``<name>.json`` and overlay PNGs into ``out_dir``.

    Overlays (upscaled to at least 512 px): ``<name>.png`` for a picture, ``<name>_slice<k:03d>.png`` for each
    volume slice with a detection, and ``<name>_montage.png`` for every volume: ``montage_slices`` slices spread
    over it, with or without boxes, so its normalisation can be inspected. The JSON holds the input, prompts,
    weights (path, sha256), encoder, normalisation, per-frame boxes (pixels) and, for volumes, ``boxes_3d``.
    Inputs are read one at a time, so a folder of volumes is never all in memory.

    Args:
        detector: a :class:`medrov.model.detector.Detector`.
        path: a picture, NIfTI file, DICOM series (folder or file) or a folder of them (see :func:`load_inputs`).
        prompts: class names to detect.
        out_dir: created if missing.
        imgsz, conf: inference size and confidence threshold.
        modality: volume normalisation, as in :func:`load_inputs`.
        normalisation: CT window and MRI percentiles (default: those of the data section's defaults).
        encoder_check: how the prompt encoder was checked against the training one (recorded in the JSON).
        model: the model URI the detector came from, when not a plain weights file (recorded in the JSON).
        montage_slices: slices per volume montage (0: no montage).

    Returns:
        Summary: ``inputs``, ``frames``, ``boxes``, ``json``, ``overlays`` and ``montages`` (written files) and
        ``skipped`` (unreadable inputs of a folder with the reason).

    Raises:
        SourceReadError: ``path`` itself is missing or unreadable (an unreadable input inside a folder is skipped).
        ConfigError: ``modality`` is invalid.
    """
    modality = _check_modality(modality)
    normalisation = normalisation or Normalisation(DEFAULT_CT_WINDOW, DEFAULT_MRI_PERCENTILES, "default", "default")
    path, out = Path(path), Path(out_dir)
    inputs = discover_inputs(path)
    is_folder = path.is_dir() and not _is_series_dir(path)
    detector.set_vocabulary(list(prompts))
    provenance = {"weights": describe_weights(detector, model), "encoder": describe_encoder(detector, encoder_check)}
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "out_dir": str(out),
        "inputs": 0,
        "frames": 0,
        "boxes": 0,
        "json": [],
        "overlays": [],
        "montages": [],
        "skipped": [],
    }
    for item in inputs:
        try:
            frames = _load(item, modality, normalisation.ct_window, normalisation.mri_percentiles)
        except SourceReadError as exc:
            if not is_folder:
                raise
            log.warning("skipped %s", exc)
            summary["skipped"].append({"input": str(item.path), "reason": str(exc)})
            continue
        payload, overlays, montages = _predict_input(
            detector, frames, out, imgsz, conf, provenance, normalisation, montage_slices
        )
        _write_json(out / f"{item.name}.json", payload)
        summary["inputs"] += 1
        summary["frames"] += len(frames)
        summary["boxes"] += sum(len(f["boxes"]) for f in payload["frames"])
        summary["json"].append(str(out / f"{item.name}.json"))
        summary["overlays"].extend(str(p) for p in overlays)
        summary["montages"].extend(str(p) for p in montages)
    return summary
