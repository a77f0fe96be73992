"""The embedded default: a deterministic synthetic multi-source corpus that needs no download.

Six sources in five modalities and five native formats, each annotating a different subset of classes so the
presence matrix has real 0 entries (an unannotated kidney *is* in the abdominal CT) and -1 entries:

- ``SynthAbdomenCT``  CT NIfTI, RAS: liver and spleen annotated; kidneys present but not annotated.
- ``SynthKidneyCT``   CT NIfTI stored LPS (to exercise orientation handling): kidneys and kidney tumour
  annotated; liver and spleen present but not annotated. Scanned in another contrast phase (arterial, as kidney
  tumour CTs are): a bright aorta, kidneys with an enhancing cortex, a darker liver and a mottled spleen. The phase
  is what makes its unannotated organs a real missing-label problem: a model can tell the two CT sources apart, so
  treating the kidney CT's liver as background teaches "no liver in this look" instead of averaging out.
- ``SynthAbdomenMRI`` MRI NIfTI (arbitrary units, bias field): liver and both kidneys annotated; spleen present.
- ``SynthChestXray``  16-bit PNG + CSV of boxes: lung nodule, lung mass, cardiomegaly.
- ``SynthBloodSmear`` RGB PNG + COCO JSON: red/white blood cells, platelets.
- ``SynthPolyp``      RGB PNG + per-class binary masks: colon polyp.

Every class has a look of its own, as its anatomy does: the liver is a large lobed organ with vessels on the
patient's right, the spleen a crescent on the left, kidneys bright beans with a dark hilum, a tumour a darker
round lesion bulging from a kidney; a lung mass is a large lobulated opacity, a nodule a small round one,
cardiomegaly a wide heart; red cells are pink discs with central pallor, white cells large cells with a purple
lobed nucleus, platelets small purple dots; a polyp a raised, shaded, redder bump with a highlight on folded
mucosa. Distractors that are no class (spine, aorta, bowel gas, ribs, normal hearts) keep it from being trivial.

**Known truth.** Beside the sources, ``<out>/<truth>/`` holds every object of every class of every image,
annotated by its source or not (``truth/<source>/labels/*.nii.gz`` for volumes, ids in ``TRUTH_IDS``;
``truth/<source>/boxes.csv`` for 2D images; ``truth/truth.json`` as the index) and ``truth/sources.yaml``, which
converts it into a fully annotated Omnis with the same splits. The demo's sources file never points at it, so
conversion and training never read it; it is what makes the training mechanisms measurable.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from medrov import paths
from medrov.config import DemoParams

SPACING = (1.5, 1.5, 5.0)
# one id per organ in the truth label volumes (the sources' own label files use their own label maps)
TRUTH_IDS = {"liver": 1, "spleen": 2, "right kidney": 3, "left kidney": 4, "kidney tumor": 5}


# --- shapes --------------------------------------------------------------------------------------------------
def _blob(
    shape: tuple[int, int],
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float = 0.0,
    lobes: int = 0,
    amp: float = 0.0,
    phase: float = 0.0,
) -> np.ndarray:
    """A rotated ellipse whose radius is modulated by ``amp * cos(lobes * theta + phase)`` (a lobed outline).

    Axis 0 of ``shape`` is x, axis 1 is y (the array order of the volumes and, transposed, of the 2D images).
    """
    x, y = np.ogrid[: shape[0], : shape[1]]
    dx, dy = x - cx, y - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = (dx * c + dy * s) / max(rx, 1e-3), (-dx * s + dy * c) / max(ry, 1e-3)
    radius = np.sqrt(u**2 + v**2)
    limit = 1.0 + amp * np.cos(lobes * np.arctan2(v, u) + phase) if lobes else 1.0
    return radius <= limit


def _disc2d(size: int, cy: float, cx: float, r: float, ry: float | None = None, **kw) -> np.ndarray:
    """A blob in image (row, column) order."""
    return _blob((size, size), cy, cx, ry if ry is not None else r, r, **kw)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], scale: int) -> np.ndarray:
    """Low-frequency texture in [-1, 1]: coarse noise upsampled by ``scale`` (nearest, then box-blurred)."""
    coarse = rng.uniform(-1, 1, [max(2, -(-n // scale)) for n in shape])
    fine = coarse
    for axis in range(len(shape)):
        fine = np.repeat(fine, scale, axis=axis)
    fine = fine[tuple(slice(0, n) for n in shape)]
    for axis in range(len(shape)):  # cheap blur: average with shifted copies
        fine = (fine + np.roll(fine, scale // 2, axis=axis) + np.roll(fine, -(scale // 2), axis=axis)) / 3
    return fine


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Pixel-edge box (x0, y0, x1, y1) of a 2D mask in (row, column) order."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --- volumes (CT, MRI) -----------------------------------------------------------------------------------------
def _abdomen(rng: np.random.Generator, shape: tuple[int, int, int], with_tumour: bool) -> dict[str, np.ndarray]:
    """Organ and distractor masks in RAS index space (axis 0 grows to the patient's right, axis 1 to anterior).

    Each organ is an in-plane shape whose size follows its own cranio-caudal profile, so slices differ.
    """
    nx, ny, nz = shape
    j = lambda lo=0.9, hi=1.1: rng.uniform(lo, hi)  # noqa: E731 - per-organ jitter
    out = {
        k: np.zeros(shape, dtype=bool)
        for k in (
            "body",
            "fat",
            "spine",
            "aorta",
            "gas",
            "liver",
            "spleen",
            "right kidney",
            "left kidney",
            "kidney tumor",
        )
    }
    # organ centre offsets along z (slices), so the organs do not all peak on the same slice
    zc = {k: nz / 2 + rng.uniform(-0.3, 0.3) * nz for k in ("liver", "spleen", "right kidney", "left kidney")}
    geo = {
        "liver": dict(
            cx=0.67 * nx * j(0.97, 1.03),
            cy=0.55 * ny * j(0.95, 1.05),
            rx=0.19 * nx * j(),
            ry=0.17 * ny * j(),
            angle=rng.uniform(-0.3, 0.3),
            lobes=3,
            amp=0.12,
            phase=rng.uniform(0, 6.3),
        ),
        "spleen": dict(
            cx=0.28 * nx * j(0.95, 1.05),
            cy=0.45 * ny * j(0.95, 1.05),
            rx=0.07 * nx * j(),
            ry=0.12 * ny * j(),
            angle=rng.uniform(0.2, 0.6),
        ),
        "right kidney": dict(
            cx=0.64 * nx * j(0.97, 1.03),
            cy=0.32 * ny * j(0.95, 1.05),
            rx=0.055 * nx * j(),
            ry=0.08 * ny * j(),
            angle=rng.uniform(-0.5, -0.2),
        ),
        "left kidney": dict(
            cx=0.36 * nx * j(0.97, 1.03),
            cy=0.32 * ny * j(0.95, 1.05),
            rx=0.055 * nx * j(),
            ry=0.08 * ny * j(),
            angle=rng.uniform(0.2, 0.5),
        ),
    }
    tumour_side = "right kidney" if rng.random() < 0.5 else "left kidney"
    tumour_z = zc[tumour_side] + rng.uniform(-0.15, 0.15) * nz
    tumour_angle = rng.uniform(0, 2 * math.pi)
    for z in range(nz):
        plane = (nx, ny)
        body = _blob(plane, nx / 2, ny / 2, 0.45 * nx, 0.37 * ny)
        inner = _blob(plane, nx / 2, ny / 2, 0.41 * nx, 0.33 * ny)
        out["body"][:, :, z], out["fat"][:, :, z] = body, body & ~inner
        out["spine"][:, :, z] = _blob(plane, nx / 2, 0.22 * ny, 0.06 * nx, 0.05 * ny)
        out["aorta"][:, :, z] = _blob(plane, 0.47 * nx, 0.33 * ny, 0.025 * nx, 0.025 * nx)
        for name, g in geo.items():
            # size profile along z: sqrt(1 - d^2) never below 0.6 inside the volume, so no slivers
            d = (z - zc[name]) / (0.75 * nz)
            f = math.sqrt(max(0.0, 1 - min(d * d, 0.64)))
            mask = _blob(
                plane,
                g["cx"],
                g["cy"],
                g["rx"] * f,
                g["ry"] * f,
                g["angle"],
                g.get("lobes", 0),
                g.get("amp", 0.0),
                g.get("phase", 0.0),
            )
            if name == "spleen":  # crescent: the hilum side is hollowed out
                mask &= ~_blob(plane, g["cx"] + 0.05 * nx, g["cy"], g["rx"] * f, g["ry"] * f * 0.8, g["angle"])
            out[name][:, :, z] = mask & inner
        if with_tumour and abs(z - tumour_z) <= max(1.0, 0.2 * nz):
            g = geo[tumour_side]
            r = 0.035 * nx * j(0.85, 1.2)
            tx = g["cx"] + 0.8 * g["rx"] * math.cos(tumour_angle)
            ty = g["cy"] + 0.8 * g["ry"] * math.sin(tumour_angle)
            out["kidney tumor"][:, :, z] = _blob(plane, tx, ty, r, r) & inner
        for _ in range(3):  # bowel gas: small dark bubbles in the anterior abdomen, no class
            gx, gy = rng.uniform(0.4, 0.6) * nx, rng.uniform(0.62, 0.78) * ny
            out["gas"][:, :, z] |= _blob(plane, gx, gy, rng.uniform(1.5, 3.5), rng.uniform(1.5, 3.5)) & inner
    # a tumour replaces kidney tissue where it lies; the organs never overlap each other (a voxel has one class,
    # so the truth and every source's own label volume agree on it)
    for organ in ("right kidney", "left kidney"):
        out[organ] &= ~out["kidney tumor"]
    retro = out["right kidney"] | out["left kidney"] | out["kidney tumor"]
    out["liver"] &= ~retro
    out["spleen"] &= ~(out["liver"] | retro)
    return out


def _hilum(organs: dict[str, np.ndarray], shape: tuple[int, int, int]) -> np.ndarray:
    """Renal sinus: the medial third of each kidney, drawn dark (fat) inside the kidney label."""
    x = np.arange(shape[0])[:, None, None]
    sinus = np.zeros(shape, dtype=bool)
    for organ, medial in (("right kidney", -1), ("left kidney", 1)):
        m = organs[organ]
        if not m.any():
            continue
        xs = np.nonzero(m)[0]
        centre = xs.mean()
        edge = centre + medial * 0.25 * (xs.max() - xs.min())
        sinus |= m & ((x - edge) * medial > 0)
    return sinus


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


class _Truth:
    """Collects the full truth of every generated image and writes it under ``<out>/<truth>``."""

    def __init__(self, root: Path):
        self.root = root
        self.index: dict[str, dict] = {}
        self.rows: dict[str, list[tuple]] = {}

    def volume(self, source: str, name: str, organs: dict[str, np.ndarray], lps: bool, image: str) -> None:
        present = [c for c in TRUTH_IDS if organs[c].any()]
        _save_nifti(
            _label_volume(organs, {c: TRUTH_IDS[c] for c in present}), self.root / source / "labels" / name, lps
        )
        entry = self.index.setdefault(
            source, {"kind": "volume", "label_map": {v: k for k, v in TRUTH_IDS.items()}, "items": []}
        )
        entry["items"].append({"image": image, "label": f"{source}/labels/{name}", "classes": present})

    def boxes(self, source: str, image: str, rows: list[tuple[str, int, int, int, int]]) -> None:
        self.index.setdefault(source, {"kind": "boxes", "boxes": f"{source}/boxes.csv", "items": []})
        self.index[source]["items"].append({"image": image, "classes": sorted({r[0] for r in rows})})
        self.rows.setdefault(source, []).extend((image, *r) for r in rows)

    def write(self) -> None:
        for source, rows in self.rows.items():
            folder = self.root / source
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "boxes.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
                writer.writerows(rows)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sources.yaml").write_text(truth_sources_yaml(self.root.name))
        (self.root / "truth.json").write_text(
            json.dumps(
                {
                    "about": "every object of every class in every synthetic image, annotated by its source or not",
                    "sources": self.index,
                },
                indent=1,
            )
        )


def _ct_source(
    root: Path,
    rng: np.random.Generator,
    cfg: DemoParams,
    name: str,
    label_ids: dict[str, int],
    lps: bool,
    truth: _Truth,
    phase: str = "portal",
) -> int:
    from scipy.ndimage import binary_erosion

    arterial = phase == "arterial"
    hu = (
        {"liver": 95.0, "spleen": 150.0, "right kidney": 150.0, "left kidney": 150.0, "kidney tumor": 45.0}
        if arterial
        else {"liver": 150.0, "spleen": 120.0, "right kidney": 240.0, "left kidney": 240.0, "kidney tumor": 35.0}
    )
    shape = tuple(cfg.volume_shape)
    for case in range(cfg.ct_volumes):
        organs = _abdomen(rng, shape, with_tumour=True)
        ct = np.full(shape, -1000.0, dtype=np.float32)
        ct[organs["body"]] = 35 + 20 * _smooth_noise(rng, shape, 6)[organs["body"]]  # muscle / bowel wall
        ct[organs["fat"]] = -100
        ct[organs["gas"]] = -800
        ct[organs["spine"]] = 600
        ct[organs["aorta"]] = 320 if arterial else 170
        for organ, value in hu.items():
            ct[organs[organ]] = value
        # liver: dark portal vessels give it its own texture; kidneys: dark renal sinus
        vessels = (_smooth_noise(rng, shape, 4) > 0.45) & organs["liver"]
        ct[vessels] = 60
        if arterial:
            # arterial spleen: mottled (bright and dark bands); kidneys: a bright enhancing cortex around the medulla
            # its own generator: the main one draws exactly as in the portal phase, so every other source is unchanged
            phase_rng = np.random.default_rng([cfg.seed, case, 1])
            bands = (_smooth_noise(phase_rng, shape, 3) > 0.2) & organs["spleen"]
            ct[bands] = 200
            for kidney in ("right kidney", "left kidney"):
                k = organs[kidney]
                ct[k & ~binary_erosion(k, np.ones((3, 3, 1), bool), iterations=2)] = 280
        ct[_hilum(organs, shape)] = -40
        ct += rng.normal(0, 18 if arterial else 12, shape).astype(np.float32)
        item = f"case_{case:03d}.nii.gz"
        _save_nifti(ct.astype(np.int16), root / name / "images" / item, lps)
        _save_nifti(_label_volume(organs, label_ids), root / name / "labels" / item, lps)
        truth.volume(name, item, organs, lps, f"{name}/images/{item}")
    return cfg.ct_volumes


def _mri_source(root: Path, rng: np.random.Generator, cfg: DemoParams, truth: _Truth) -> int:
    from scipy.ndimage import binary_erosion

    ids = {"liver": 1, "right kidney": 2, "left kidney": 3}
    shape = tuple(cfg.volume_shape)
    for case in range(cfg.mri_volumes):
        organs = _abdomen(rng, shape, with_tumour=False)
        # T1-like: fat bright, liver brighter than spleen, kidneys darker with a bright cortex rim
        mr = np.zeros(shape, dtype=np.float32)
        mr[organs["body"]] = 320
        mr[organs["fat"]] = 950
        mr[organs["gas"]] = 0
        mr[organs["spine"]] = 700
        mr[organs["aorta"]] = 80
        mr[organs["liver"]] = 620 + 40 * _smooth_noise(rng, shape, 5)[organs["liver"]]
        mr[organs["spleen"]] = 430
        for kidney in ("right kidney", "left kidney"):
            k = organs[kidney]
            rim = k & ~binary_erosion(k, np.ones((3, 3, 1), bool), iterations=2)
            mr[k] = 250
            mr[rim] = 520  # cortex rim
        mr[_hilum(organs, shape)] = 900  # sinus fat
        x, y = np.ogrid[: shape[0], : shape[1]]
        bias = (1 + 0.25 * np.cos(x / shape[0] * math.pi + rng.uniform(0, 3)) * np.cos(y / shape[1] * math.pi))[
            ..., None
        ]
        mr = np.clip(mr * bias + rng.normal(0, 25, shape), 0, None) * rng.uniform(0.5, 2.0)
        item = f"subject_{case:03d}.nii.gz"
        _save_nifti(mr.astype(np.float32), root / "SynthAbdomenMRI" / "images" / item)
        _save_nifti(_label_volume(organs, ids), root / "SynthAbdomenMRI" / "labels" / item)
        truth.volume("SynthAbdomenMRI", item, organs, False, f"SynthAbdomenMRI/images/{item}")
    return cfg.mri_volumes


# --- 2D sources ------------------------------------------------------------------------------------------------
def _place(rng, size: int, taken: np.ndarray, r: float, lo: float, hi: float, tries: int = 30, **kw):
    """A blob of radius ``r`` at a free spot with centre in [lo, hi] * size, or None."""
    for _ in range(tries):
        cy, cx = rng.uniform(lo, hi, size=2) * size
        mask = _disc2d(size, cy, cx, r, **kw)
        if not (mask & taken).any():
            return mask, cy, cx
    return None


def _xray_source(root: Path, rng: np.random.Generator, cfg: DemoParams, truth: _Truth) -> int:
    from PIL import Image

    s = cfg.image_size
    folder = root / "SynthChestXray"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(cfg.xray_images):
        img = np.full((s, s), 44000.0) + 3000 * _smooth_noise(rng, (s, s), 16)
        lungs = [_disc2d(s, 0.48 * s, cx * s, 0.14 * s, 0.32 * s) for cx in (0.3, 0.7)]
        for lung in lungs:
            img[lung] = 14000
        yy = np.arange(s)[:, None]
        ribs = (np.sin(yy / s * 2 * math.pi * 7 + rng.uniform(0, 6)) > 0.75) & (lungs[0] | lungs[1])
        img[ribs] += 7000  # ribs: faint bright bands across the lungs, no class
        enlarged = rng.random() < 0.5
        heart_w = rng.uniform(0.17, 0.21) * s if enlarged else rng.uniform(0.09, 0.12) * s
        heart = _disc2d(s, 0.64 * s, 0.46 * s, heart_w, 0.13 * s)
        img[heart] = 36000
        name = f"cxr_{i:03d}.png"
        objects = []
        if enlarged:
            objects.append(("cardiomegaly", *_extent(heart)))
        taken = heart.copy()
        for _ in range(int(rng.integers(1, 4))):
            big = rng.random() < 0.55
            lung = lungs[int(rng.integers(0, 2))]
            r = rng.uniform(0.06, 0.085) * s if big else rng.uniform(0.02, 0.03) * s
            spot = None
            for _ in range(30):
                cy, cx = np.argwhere(lung)[int(rng.integers(0, lung.sum()))]
                mask = _disc2d(s, cy, cx, r, lobes=5 if big else 0, amp=0.18 if big else 0.0, phase=rng.uniform(0, 6))
                if not (mask & taken).any() and (mask & lung).sum() > 0.8 * mask.sum():
                    spot = mask
                    break
            if spot is None:
                continue
            taken |= spot
            img[spot] = 33000 if big else 40000  # a nodule is small and dense, a mass large and softer
            objects.append(("lung mass" if big else "lung nodule", *_extent(spot)))
        img += rng.normal(0, 700, (s, s))
        Image.fromarray(np.clip(img, 0, 65535).astype(np.uint16)).save(folder / "images" / name)
        rows += [(name, *o) for o in objects]
        truth.boxes("SynthChestXray", name, objects)
    with open(folder / "boxes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
        writer.writerows(rows)
    return cfg.xray_images


def _smear_source(root: Path, rng: np.random.Generator, cfg: DemoParams, truth: _Truth) -> int:
    from PIL import Image

    s = cfg.image_size
    folder = root / "SynthBloodSmear"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    categories = [{"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"}, {"id": 3, "name": "Platelets"}]
    names = {1: "red blood cell", 2: "white blood cell", 3: "platelets"}
    images, annotations = [], []
    for i in range(cfg.microscopy_images):
        img = np.empty((s, s, 3), dtype=np.float32)
        img[:] = (236, 222, 214)
        taken = np.zeros((s, s), dtype=bool)
        cells = [(2, rng.uniform(0.085, 0.1) * s) for _ in range(int(rng.random() < 0.7) + int(rng.random() < 0.2))]
        cells += [(1, rng.uniform(0.05, 0.062) * s) for _ in range(int(rng.integers(4, 9)))]
        cells += [(3, rng.uniform(0.03, 0.036) * s) for _ in range(int(rng.integers(2, 6)))]
        objects = []
        for cat, r in cells:
            lobes = 4 if cat == 2 else 0
            placed = _place(rng, s, taken, r * 1.15, 0.08, 0.92, ry=r * (rng.uniform(0.85, 1.0) if cat == 1 else 1.0))
            if placed is None:
                continue
            _, cy, cx = placed
            mask = _disc2d(s, cy, cx, r, ry=r * (rng.uniform(0.85, 1.0) if cat == 1 else 1.0), angle=rng.uniform(0, 3))
            taken |= _disc2d(s, cy, cx, r * 1.15)
            if cat == 1:  # pink disc, paler centre (central pallor)
                img[mask] = (205, 95, 105)
                img[_disc2d(s, cy, cx, 0.45 * r) & mask] = (225, 160, 165)
            elif cat == 2:  # pale cytoplasm around a dark purple lobed nucleus
                img[mask] = (215, 190, 215)
                img[_disc2d(s, cy, cx, 0.62 * r, lobes=lobes, amp=0.3, phase=rng.uniform(0, 6)) & mask] = (95, 45, 140)
            else:  # small dense purple fragment
                img[mask] = (120, 70, 160)
            x0, y0, x1, y1 = _extent(mask)
            objects.append((names[cat], x0, y0, x1, y1))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                }
            )
        img += rng.normal(0, 5, img.shape)
        name = f"smear_{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": s, "height": s})
        truth.boxes("SynthBloodSmear", name, objects)
    (folder / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return cfg.microscopy_images


def _polyp_source(root: Path, rng: np.random.Generator, cfg: DemoParams, truth: _Truth) -> int:
    from PIL import Image

    s = cfg.image_size
    folder = root / "SynthPolyp"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    for i in range(cfg.endoscopy_images):
        ly, lx = rng.uniform(0.35, 0.65, size=2) * s  # the lumen: a dark centre the light falls off towards
        dist = np.sqrt((yy - ly) ** 2 + (xx - lx) ** 2) / s
        light = np.clip(0.35 + 1.3 * dist, 0.3, 1.0)
        folds = 0.85 + 0.15 * np.sin(dist * 60 + rng.uniform(0, 6))  # circular haustral folds
        base = np.stack([190 * light * folds, 95 * light * folds, 85 * light * folds], axis=-1)
        img = base + 8 * _smooth_noise(rng, (s, s), 8)[..., None]
        taken = np.zeros((s, s), dtype=bool)
        objects = []
        mask_all = np.zeros((s, s), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(0.07, 0.15) * s
            placed = _place(rng, s, taken, r * 1.1, 0.15, 0.85, ry=r * rng.uniform(0.75, 1.0))
            if placed is None:
                continue
            _, cy, cx = placed
            mask = _disc2d(s, cy, cx, r, ry=r * rng.uniform(0.75, 1.0), angle=rng.uniform(0, 3), lobes=3, amp=0.08)
            taken |= _disc2d(s, cy, cx, r * 1.1)
            # a raised bump: shaded from the light side, a specular highlight near its top
            d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / r
            shade = np.clip(1.15 - 0.45 * d, 0.6, 1.15)
            img[mask] = np.stack([235 * shade, 120 * shade, 110 * shade], -1)[mask]
            img[_disc2d(s, cy - 0.35 * r, cx - 0.3 * r, 0.18 * r) & mask] = (250, 245, 240)
            mask_all |= mask
            objects.append(("colon polyp", *_extent(mask)))
        img += rng.normal(0, 4, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / "images" / f"frame_{i:03d}.png")
        Image.fromarray(mask_all.astype(np.uint8) * 255).save(folder / "masks" / f"frame_{i:03d}_polyp.png")
        truth.boxes("SynthPolyp", f"frame_{i:03d}.png", objects)
    return cfg.endoscopy_images


def truth_sources_yaml(truth: str) -> str:
    """A sources file for the truth folder: the demo sources with every object annotated (volumes read the truth
    label volumes; the 2D sources already annotate every object they hold). Same names and item ids as the demo
    sources, hence the same patient splits: ``medrov convert --sources <out>/<truth>/sources.yaml --out DIR`` gives
    a fully annotated Omnis to evaluate on (a class with M=0 in a demo source is M=1 there)."""
    window = "[-160, 240]"
    label_map = "{" + ", ".join(f"{v}: {k}" for k, v in TRUTH_IDS.items()) + "}"
    lines = [
        "# Written by medrov demo-sources: the demo sources with their full truth (see medrov/data/demo.py).",
        "# Never read by the demo pipeline; convert it yourself to evaluate against every object.",
        "sources:",
    ]
    for name, modality, window_line in (
        ("SynthAbdomenCT", "ct", True),
        ("SynthKidneyCT", "ct", True),
        ("SynthAbdomenMRI", "mri", False),
    ):
        lines += [
            f"  - name: {name}",
            f"    root: ../{name}",
            f"    modality: {modality}",
            "    format: volume",
            "    images: images/*.nii.gz",
            f"    labels: ../{truth}/{name}/labels/{{name}}",
            f"    label_map: {label_map}",
        ]
        lines += [f"    ct_window: {window}"] if window_line else []
    lines += [
        "  - name: SynthChestXray",
        "    root: ../SynthChestXray",
        "    modality: xray",
        "    format: csv",
        "    images: images",
        f"    annotations: ../{truth}/SynthChestXray/boxes.csv",
        "    classes: [lung nodule, lung mass, cardiomegaly]",
        "  - name: SynthBloodSmear",
        "    root: ../SynthBloodSmear",
        "    modality: microscopy",
        "    format: csv",
        "    images: images",
        f"    annotations: ../{truth}/SynthBloodSmear/boxes.csv",
        "    classes: [red blood cell, white blood cell, platelets]",
        "  - name: SynthPolyp",
        "    root: ../SynthPolyp",
        "    modality: endoscopy",
        "    format: mask2d",
        "    images: images/*.png",
        "    labels: masks/{stem}_{class}.png",
        "    classes: [polyp]",
        "    label_map: {polyp: colon polyp}",
    ]
    return "\n".join(lines) + "\n"


def truth_dir(cfg: DemoParams, out: str | Path | None = None) -> Path:
    """Where :func:`generate` writes the full truth: ``<out>/<cfg.truth>``."""
    return paths.resolve(out or cfg.out) / cfg.truth


def generate(cfg: DemoParams, out: str | Path | None = None) -> dict[str, int]:
    """Write all demo sources under ``out`` (default ``cfg.out``) and their full truth beside them.

    The same seed gives the same bytes. Returns the number of inputs (volumes or images) per source.
    """
    root = paths.resolve(out or cfg.out)
    rng = np.random.default_rng(cfg.seed)
    truth = _Truth(truth_dir(cfg, root))
    counts = {
        "SynthAbdomenCT": _ct_source(root, rng, cfg, "SynthAbdomenCT", {"liver": 1, "spleen": 2}, False, truth),
        "SynthKidneyCT": _ct_source(
            root,
            rng,
            cfg,
            "SynthKidneyCT",
            {"right kidney": 1, "left kidney": 2, "kidney tumor": 3},
            True,
            truth,
            phase="arterial",
        ),
        "SynthAbdomenMRI": _mri_source(root, rng, cfg, truth),
        "SynthChestXray": _xray_source(root, rng, cfg, truth),
        "SynthBloodSmear": _smear_source(root, rng, cfg, truth),
        "SynthPolyp": _polyp_source(root, rng, cfg, truth),
    }
    truth.write()
    return counts
