"""The embedded default: a deterministic synthetic multi-source corpus that needs no download.

Six sources in five modalities and five native formats, each annotating a different subset of classes so the
presence matrix has real 0 entries (an unannotated kidney *is* in the abdominal CT) and -1 entries:

- ``SynthAbdomenCT``  CT NIfTI, RAS: liver and spleen annotated; kidneys present but not annotated.
- ``SynthKidneyCT``   CT NIfTI stored LPS (to exercise orientation handling): kidneys and kidney tumour
  annotated; liver and spleen present but not annotated.
- ``SynthAbdomenMRI`` MRI NIfTI (arbitrary units): liver and both kidneys annotated.
- ``SynthChestXray``  16-bit PNG + CSV of boxes: lung nodule, lung mass, cardiomegaly.
- ``SynthBloodSmear`` RGB PNG + COCO JSON: red/white blood cells, platelets.
- ``SynthPolyp``      RGB PNG + per-class binary masks: colon polyp.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medrov import paths
from medrov.config import DemoParams

SPACING = (2.0, 2.0, 5.0)


def _ellipsoid(shape: tuple[int, int, int], centre, radii) -> np.ndarray:
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 <= 1.0


def _abdomen(rng: np.random.Generator, shape: tuple[int, int, int], with_tumour: bool) -> dict[str, np.ndarray]:
    """Organ masks in RAS index space (axis 0 grows to the patient's right, axis 1 to anterior)."""
    nx, ny, nz = shape
    j = lambda: rng.uniform(0.9, 1.1)  # noqa: E731 - per-organ size jitter
    organs = {
        "body": _ellipsoid(shape, (nx / 2, ny / 2, nz / 2), (0.45 * nx, 0.38 * ny, nz)),
        "liver": _ellipsoid(shape, (0.68 * nx, 0.55 * ny, 0.45 * nz * j()), (0.16 * nx * j(), 0.14 * ny * j(), 0.3 * nz)),
        "spleen": _ellipsoid(shape, (0.28 * nx, 0.45 * ny, 0.5 * nz * j()), (0.07 * nx * j(), 0.08 * ny * j(), 0.2 * nz)),
        "right kidney": _ellipsoid(shape, (0.63 * nx, 0.33 * ny, 0.6 * nz * j()), (0.05 * nx * j(), 0.06 * ny, 0.18 * nz)),
        "left kidney": _ellipsoid(shape, (0.37 * nx, 0.33 * ny, 0.6 * nz * j()), (0.05 * nx * j(), 0.06 * ny, 0.18 * nz)),
    }
    if with_tumour:
        side = "right kidney" if rng.random() < 0.5 else "left kidney"
        cx = 0.63 * nx if side == "right kidney" else 0.37 * nx
        organs["kidney tumor"] = _ellipsoid(shape, (cx + rng.uniform(-2, 2), 0.33 * ny + rng.uniform(-2, 2), 0.6 * nz), (2.5, 2.5, 1.2)) & organs[side]
    return organs


def _label_volume(organs: dict[str, np.ndarray], label_ids: dict[str, int]) -> np.ndarray:
    label = np.zeros(organs["body"].shape, dtype=np.uint8)
    for name, idx in label_ids.items():
        label[organs[name]] = idx
    return label


def _save_nifti(array: np.ndarray, path: Path, lps: bool = False) -> None:
    import nibabel as nib

    affine = np.diag([*SPACING, 1.0])
    if lps:
        # store flipped in x and y with an affine that says so: the same anatomy, another array order
        array = array[::-1, ::-1, :]
        affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
        affine[0, 3] = SPACING[0] * (array.shape[0] - 1)
        affine[1, 3] = SPACING[1] * (array.shape[1] - 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), affine), str(path))


def _ct_source(root: Path, rng: np.random.Generator, cfg: DemoParams, name: str, label_ids: dict[str, int], lps: bool) -> int:
    hu = {"body": 40.0, "liver": 130.0, "spleen": 110.0, "right kidney": 230.0, "left kidney": 230.0, "kidney tumor": 30.0}
    for case in range(cfg.ct_volumes):
        organs = _abdomen(rng, cfg.volume_shape, with_tumour="kidney tumor" in label_ids)
        ct = np.full(cfg.volume_shape, -1000.0, dtype=np.float32)
        for organ in ("body", "liver", "spleen", "right kidney", "left kidney", "kidney tumor"):
            if organ in organs:
                ct[organs[organ]] = hu[organ]
        ct += rng.normal(0, 15, cfg.volume_shape).astype(np.float32)
        _save_nifti(ct.astype(np.int16), root / name / "images" / f"case_{case:03d}.nii.gz", lps)
        _save_nifti(_label_volume(organs, label_ids), root / name / "labels" / f"case_{case:03d}.nii.gz", lps)
    return cfg.ct_volumes


def _mri_source(root: Path, rng: np.random.Generator, cfg: DemoParams) -> int:
    ids = {"liver": 1, "right kidney": 2, "left kidney": 3}
    for case in range(cfg.mri_volumes):
        organs = _abdomen(rng, cfg.volume_shape, with_tumour=False)
        mr = np.zeros(cfg.volume_shape, dtype=np.float32)
        mr[organs["body"]] = 300
        for organ, value in (("liver", 700), ("spleen", 900), ("right kidney", 1200), ("left kidney", 1200)):
            mr[organs[organ]] = value
        mr = np.clip(mr + rng.normal(0, 40, cfg.volume_shape), 0, None) * rng.uniform(0.5, 2.0)
        _save_nifti(mr.astype(np.float32), root / "SynthAbdomenMRI" / "images" / f"subject_{case:03d}.nii.gz")
        _save_nifti(_label_volume(organs, ids), root / "SynthAbdomenMRI" / "labels" / f"subject_{case:03d}.nii.gz")
    return cfg.mri_volumes


def _disc(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.ogrid[: shape[0], : shape[1]]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel-edge box (x0, y0, x1, y1) of a mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _xray_source(root: Path, rng: np.random.Generator, cfg: DemoParams) -> int:
    from PIL import Image

    s = cfg.image_size
    folder = root / "SynthChestXray"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cfg.xray_images):
        img = np.full((s, s), 42000.0)
        lungs = _disc((s, s), 0.5 * s, 0.3 * s, 0.3 * s, 0.13 * s) | _disc((s, s), 0.5 * s, 0.7 * s, 0.3 * s, 0.13 * s)
        img[lungs] = 12000
        heart_r = rng.uniform(0.1, 0.2) * s
        heart = _disc((s, s), 0.62 * s, 0.47 * s, heart_r * 0.8, heart_r)
        img[heart] = 38000
        name = f"cxr_{i:03d}.png"
        if heart_r > 0.16 * s:
            rows.append((name, "cardiomegaly", *_extent(heart)))
        for _ in range(rng.integers(1, 3)):
            big = rng.random() < 0.35
            r = rng.uniform(5, 8) if big else rng.uniform(2, 3.5)
            cx = rng.choice([0.3, 0.7]) * s + rng.uniform(-0.05, 0.05) * s
            cy = rng.uniform(0.3, 0.65) * s
            lesion = _disc((s, s), cy, cx, r, r)
            img[lesion] = 30000
            rows.append((name, "lung mass" if big else "lung nodule", *_extent(lesion)))
        img += rng.normal(0, 800, (s, s))
        Image.fromarray(np.clip(img, 0, 65535).astype(np.uint16)).save(folder / "images" / name)
    with open(folder / "boxes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
        writer.writerows(rows)
    return cfg.xray_images


def _smear_source(root: Path, rng: np.random.Generator, cfg: DemoParams) -> int:
    from PIL import Image

    s = cfg.image_size
    folder = root / "SynthBloodSmear"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"}, {"id": 3, "name": "Platelets"}]
    colours = {1: (200, 70, 80), 2: (110, 60, 160), 3: (150, 90, 170)}
    images, annotations = [], []
    for i in range(cfg.microscopy_images):
        img = np.empty((s, s, 3), dtype=np.float32)
        img[:] = (235, 215, 205)
        taken = np.zeros((s, s), dtype=bool)
        cells = [(1, rng.uniform(6, 9))] * int(rng.integers(3, 7)) + [(3, rng.uniform(2, 3))] * int(rng.integers(0, 3))
        if rng.random() < 0.6:
            cells.append((2, rng.uniform(11, 14)))
        for cat, r in cells:
            for _ in range(20):  # place without overlap so each cell is one box
                cy, cx = rng.uniform(r, s - r, size=2)
                mask = _disc((s, s), cy, cx, r, r)
                if not (mask & taken).any():
                    break
            else:
                continue
            taken |= mask
            img[mask] = colours[cat]
            x0, y0, x1, y1 = _extent(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat, "bbox": [x0, y0, x1 - x0, y1 - y0]})
        img += rng.normal(0, 6, img.shape)
        name = f"smear_{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": s, "height": s})
    (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return cfg.microscopy_images


def _polyp_source(root: Path, rng: np.random.Generator, cfg: DemoParams) -> int:
    from PIL import Image

    s = cfg.image_size
    folder = root / "SynthPolyp"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(cfg.endoscopy_images):
        yy, xx = np.mgrid[:s, :s]
        vignette = 1.0 - 0.6 * (((yy - s / 2) ** 2 + (xx - s / 2) ** 2) / (s / 2) ** 2)
        img = np.stack([180 * vignette, 80 * vignette, 70 * vignette], axis=-1)
        mask = np.zeros((s, s), dtype=bool)
        for _ in range(rng.integers(1, 3)):
            r = rng.uniform(0.06, 0.14) * s
            mask |= _disc((s, s), rng.uniform(0.25, 0.75) * s, rng.uniform(0.25, 0.75) * s, r, r * rng.uniform(0.7, 1.3))
        img[mask] = (225, 150, 130)
        img += rng.normal(0, 5, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"frame_{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / "masks" / f"frame_{i:03d}_polyp.png")
    return cfg.endoscopy_images


def generate(cfg: DemoParams, out: str | Path | None = None) -> dict[str, int]:
    """Write all demo sources under ``out`` (default ``cfg.out``); the same seed gives the same bytes."""
    root = paths.resolve(out or cfg.out)
    rng = np.random.default_rng(cfg.seed)
    return {
        "SynthAbdomenCT": _ct_source(root, rng, cfg, "SynthAbdomenCT", {"liver": 1, "spleen": 2}, lps=False),
        "SynthKidneyCT": _ct_source(
            root, rng, cfg, "SynthKidneyCT", {"right kidney": 1, "left kidney": 2, "kidney tumor": 3}, lps=True
        ),
        "SynthAbdomenMRI": _mri_source(root, rng, cfg),
        "SynthChestXray": _xray_source(root, rng, cfg),
        "SynthBloodSmear": _smear_source(root, rng, cfg),
        "SynthPolyp": _polyp_source(root, rng, cfg),
    }
