"""Builders of tiny, valid sources of every format in ``tmp_path`` and a sources file that points at them.

Tests get a :class:`Corpus` (fixture ``corpus``): each builder method writes one source (a few 32-64 px
images or 32x32x6 volumes), registers its entry for the sources file and returns a :class:`Built` that lists
the files of every item so a test can break one of them. ``corpus.run(params)`` writes the sources file, runs
``convert.run`` into ``<tmp>/omnis`` and returns a :class:`Result` (summary + the output tables).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

VOXEL = (1.5, 1.5, 3.0)  # mm, RAS affine diagonal of the synthetic NIfTI volumes
VOLUME_SHAPE = (32, 32, 6)
CT_LABELS = {1: "liver", 2: "spleen"}


# ---------------------------------------------------------------- low-level writers


def ras_affine(
    spacing: tuple[float, float, float] = VOXEL, origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), ras_affine() if affine is None else affine), str(path))
    return path


def ct_volume(seed: int, shape: tuple[int, ...] = VOLUME_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """An int16 CT (air, a body block, two organs) and its uint8 label volume (1 liver, 2 spleen).

    The organs occupy slices 1..4 only, so slices 0 and 5 are empty and are skipped by default.
    """
    rng = np.random.default_rng(seed)
    ct = np.full(shape, -1000.0, dtype=np.float32)
    ct[3:29, 4:28, :] = 40.0
    label = np.zeros(shape, dtype=np.uint8)
    jitter = int(rng.integers(0, 3))
    label[18 + jitter : 26 + jitter, 8:20, 1:5] = 1  # liver: high RAS x = patient right, shown on the image left
    label[5:10, 12 + jitter : 18 + jitter, 2:4] = 2  # spleen
    ct[label == 1] = 95.0
    ct[label == 2] = 70.0
    ct += rng.normal(0, 10, shape).astype(np.float32)
    return ct.astype(np.int16), label


def rgb_image(seed: int, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """(height, width, 3) uint8 smear-like picture."""
    rng = np.random.default_rng(seed)
    img = np.empty((*size, 3), dtype=np.uint8)
    img[:] = (230, 210, 200)
    img[8:20, 10:24] = (200, 70, 80)
    img[24:40, 30:50] = (110, 60, 160)
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    return img - noise


def save_image(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, float, float, float, float]]) -> str:
    parts = [
        "<annotation>",
        "  <folder>JPEGImages</folder>",
        f"  <filename>{filename}</filename>",
        f"  <size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, x0, y0, x1, y1 in objects:
        parts.append(
            f"  <object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0:g}</xmin><ymin>{y0:g}</ymin>"
            f"<xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def lps_affine_of_series(origin_lps: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """The RAS affine of an axial DICOM series (IOP 1,0,0,0,1,0) as medrov.io.volume builds it."""
    col_spacing, row_spacing, dz = spacing
    lps = np.eye(4)
    lps[0, 0], lps[1, 1], lps[2, 2] = col_spacing, row_spacing, dz
    lps[:3, 3] = origin_lps
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    origin_lps: tuple[float, float, float] = (-24.0, -24.0, 0.0),
    spacing: tuple[float, float, float] = (1.5, 1.5, 3.0),
    series_seed: int = 0,
) -> list[Path]:
    """One uncompressed CT series, a file per slice. ``hu`` is indexed (col, row, slice) like the reader's array.

    Stored values are ``hu + 1024`` with RescaleIntercept -1024, so the reader must apply the rescale.
    Files are written in reverse slice order (names do not follow positions).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    cols, rows, n = hu.shape
    series_uid = generate_uid(entropy_srcs=[f"series-{series_seed}"])
    study_uid = generate_uid(entropy_srcs=[f"study-{series_seed}"])
    files = []
    for k in range(n):
        sop_uid = generate_uid(entropy_srcs=[f"sop-{series_seed}-{k}"])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.PatientID = f"P{series_seed:03d}"
        ds.InstanceNumber = n - k
        ds.ImagePositionPatient = [origin_lps[0], origin_lps[1], origin_lps[2] + k * spacing[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing, column spacing
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        stored = np.clip(hu[:, :, k].T.astype(np.int32) + 1024, 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        path = folder / f"slice_{n - 1 - k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


# ---------------------------------------------------------------- corpus


@dataclass
class Built:
    """A source written to disk: ``items`` maps an item key to its files (``image`` first)."""

    name: str
    root: Path
    entry: dict[str, Any]
    items: dict[str, dict[str, Path]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.items)


class Result:
    """What one run returned and wrote: the tables are read right after the run (later runs overwrite them)."""

    def __init__(self, summary: dict[str, Any], out: Path):
        self.summary = summary
        self.out = out
        self.manifest = pd.read_parquet(out / "manifest.parquet")
        self.boxes = pd.read_parquet(out / "boxes.parquet")
        self.quarantine = pd.read_csv(out / "quarantine.csv", keep_default_na=False, dtype=str)

    def __repr__(self) -> str:
        return f"Result(out={self.out}, summary={self.summary})"

    def rows(self, level: str) -> pd.DataFrame:
        q = self.quarantine
        return q[q["level"] == level]

    def expect_one_bad(self, bad: str | Path, words: list[str], good: int, total: int | None = None) -> pd.Series:
        """The standard bad-input contract: one quarantined input, every good one converted and on disk."""
        total = good + 1 if total is None else total
        s = self.summary
        rows = self.rows("input")
        assert len(rows) == 1, f"expected exactly one quarantined input, got:\n{rows.to_string()}"
        row = rows.iloc[0]
        assert row["action"] == "quarantined"
        assert str(bad) in row["input"] or Path(str(bad)).name in row["reason"], row.to_dict()
        for word in words:
            assert word.lower() in row["reason"].lower(), f"{word!r} not in reason {row['reason']!r}"
        assert Path(str(bad)).name in row["reason"] or Path(str(bad)).name in row["input"], row.to_dict()
        assert s["converted"] == good, s
        assert s["quarantined"] == 1, s
        assert s["converted"] + s["quarantined"] == s["total"] == total, s
        manifest = self.manifest
        assert manifest["item_id"].nunique() == good
        assert all((self.out / p).is_file() for p in manifest["image"])
        assert all((self.out / p).is_file() for p in manifest["label"])
        return row


class Corpus:
    """Sources under ``root/raw`` and the sources file ``root/sources.yaml``; output in ``root/omnis``."""

    # the writers, for tests that break or add one input (test modules cannot import this conftest)
    save_nifti = staticmethod(save_nifti)
    save_image = staticmethod(save_image)
    ct_volume = staticmethod(ct_volume)
    rgb_image = staticmethod(rgb_image)
    ras_affine = staticmethod(ras_affine)
    voc_xml = staticmethod(voc_xml)
    write_dicom_series = staticmethod(write_dicom_series)
    lps_affine_of_series = staticmethod(lps_affine_of_series)

    def __init__(self, root: Path):
        self.root = root
        self.raw = root / "raw"
        self.sources_file = root / "sources.yaml"
        self.out = root / "omnis"
        self.built: dict[str, Built] = {}

    # ---- plumbing

    def _add(self, built: Built) -> Built:
        assert built.name not in self.built
        self.built[built.name] = built
        return built

    def write(self) -> Path:
        entries = [b.entry for b in self.built.values()]
        self.sources_file.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
        return self.sources_file

    def run(self, params, workers: int | None = None, out: Path | None = None) -> Result:
        from medrov.data import convert

        self.write()
        target = out or self.out
        summary = convert.run(params, sources_file=self.sources_file, out_dir=target, workers=workers, progress=False)
        return Result(summary, target)

    def add_entry(self, entry: dict[str, Any]) -> Built:
        """Register a source that already exists on disk (e.g. shared real data)."""
        return self._add(Built(entry["name"], Path(entry["root"]), entry))

    # ---- volumes

    def nifti_ct(self, name: str = "TinyCT", n: int = 3) -> Built:
        root = self.raw / name
        built = Built(
            name,
            root,
            {
                "name": name,
                "root": str(root),
                "modality": "ct",
                "format": "volume",
                "images": "images/*.nii.gz",
                "labels": "labels/{name}",
                "label_map": dict(CT_LABELS),
            },
        )
        for i in range(n):
            ct, label = ct_volume(i)
            key = f"case_{i:03d}"
            built.items[key] = {
                "image": save_nifti(root / "images" / f"{key}.nii.gz", ct),
                "label": save_nifti(root / "labels" / f"{key}.nii.gz", label),
            }
        return self._add(built)

    def dicom_ct(self, name: str = "TinyDicomCT", n: int = 2) -> Built:
        """DICOM series folders (``series_NNN/slice_KKK.dcm``) with NIfTI labels on the same grid."""
        root = self.raw / name
        cases = []
        entry = {
            "name": name,
            "root": str(root),
            "modality": "ct",
            "format": "dicom",
            "cases": cases,
            "label_map": dict(CT_LABELS),
        }
        built = Built(name, root, entry)
        spacing = (1.5, 1.5, 3.0)
        origin = np.array([-24.0, -24.0, 10.0])
        for i in range(n):
            ct, label = ct_volume(100 + i)
            key = f"series_{i:03d}"
            files = write_dicom_series(root / key, ct, tuple(origin), spacing, series_seed=i)
            label_path = save_nifti(root / "labels" / f"{key}.nii.gz", label, lps_affine_of_series(origin, spacing))
            cases.append({"image": key, "label": f"labels/{key}.nii.gz", "patient": f"patient{i}"})
            built.items[key] = {"image": root / key, "label": label_path, **{f.name: f for f in files}}
        return self._add(built)

    # ---- 2D

    def voc(self, name: str = "TinyVOC", n: int = 3) -> Built:
        root = self.raw / name
        built = Built(
            name,
            root,
            {
                "name": name,
                "root": str(root),
                "modality": "microscopy",
                "format": "voc",
                "label_map": {"RBC": "red blood cell", "WBC": "white blood cell"},
            },
        )
        for i in range(n):
            key = f"img_{i:03d}"
            image = save_image(root / "JPEGImages" / f"{key}.jpg", rgb_image(i))
            xml = root / "Annotations" / f"{key}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            # VOC corners are 1-based inclusive: columns 10..23 -> xmin 11, xmax 24
            xml.write_text(voc_xml(image.name, 64, 48, [("RBC", 11, 9, 24, 20), ("WBC", 31, 25, 50, 40)]))
            built.items[key] = {"image": image, "xml": xml}
        return self._add(built)

    def coco(self, name: str = "TinyCOCO", n: int = 3) -> Built:
        root = self.raw / name
        built = Built(
            name,
            root,
            {
                "name": name,
                "root": str(root),
                "modality": "microscopy",
                "format": "coco",
                "images": "images",
                "annotations": "annotations.json",
                "label_map": {"RBC": "red blood cell", "WBC": "white blood cell"},
            },
        )
        images, annotations = [], []
        for i in range(n):
            key = f"smear_{i:03d}"
            image = save_image(root / "images" / f"{key}.png", rgb_image(10 + i))
            images.append({"id": i + 1, "file_name": image.name, "width": 64, "height": 48})
            annotations.append({"id": 2 * i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 8, 14, 12]})
            annotations.append({"id": 2 * i + 2, "image_id": i + 1, "category_id": 2, "bbox": [30, 24, 20, 16]})
            built.items[key] = {"image": image}
        data = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"}],
        }
        (root / "annotations.json").write_text(json.dumps(data))
        return self._add(built)

    def csv(self, name: str = "TinyCSV", n: int = 3) -> Built:
        root = self.raw / name
        built = Built(
            name,
            root,
            {
                "name": name,
                "root": str(root),
                "modality": "xray",
                "format": "csv",
                "images": "images",
                "annotations": "boxes.csv",
                "classes": ["lung nodule", "lung mass"],
            },
        )
        lines = ["image,label,x1,y1,x2,y2"]
        for i in range(n):
            key = f"cxr_{i:03d}"
            gray = np.full((64, 64), 90, dtype=np.uint8)
            gray[10:16, 12:18] = 200
            gray[30:46, 34:52] = 180
            image = save_image(root / "images" / f"{key}.png", gray)
            lines += [f"{image.name},lung nodule,12,10,18,16", f"{image.name},lung mass,34,30,52,46"]
            built.items[key] = {"image": image}
        (root / "boxes.csv").write_text("\n".join(lines) + "\n")
        return self._add(built)

    def mask2d(self, name: str = "TinyPolyp", n: int = 3) -> Built:
        root = self.raw / name
        built = Built(
            name,
            root,
            {
                "name": name,
                "root": str(root),
                "modality": "endoscopy",
                "format": "mask2d",
                "images": "images/*.png",
                "labels": "masks/{stem}_{class}.png",
                "classes": ["polyp"],
                "label_map": {"polyp": "colon polyp"},
            },
        )
        for i in range(n):
            key = f"frame_{i:03d}"
            image = save_image(root / "images" / f"{key}.png", rgb_image(20 + i, (40, 40)))
            mask = np.zeros((40, 40), dtype=np.uint8)
            mask[5 + i : 15 + i, 6:14] = 255
            mask[25:35, 20:36] = 255
            built.items[key] = {"image": image, "mask": save_image(root / "masks" / f"{key}_polyp.png", mask)}
        return self._add(built)

    def yolo(self, name: str = "TinyYOLO", n: int = 3) -> Built:
        root = self.raw / name
        built = Built(
            name,
            root,
            {
                "name": name,
                "root": str(root),
                "modality": "microscopy",
                "format": "yolo",
                "classes": ["red blood cell", "white blood cell"],
            },
        )
        for i in range(n):
            key = f"cells_{i:03d}"
            image = save_image(root / "images" / f"{key}.png", rgb_image(30 + i, (32, 32)))
            label = root / "labels" / f"{key}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.25 0.25 0.25 0.25\n1 0.625 0.6875 0.5 0.375\n")
            built.items[key] = {"image": image, "label": label}
        return self._add(built)


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path)


@pytest.fixture(scope="session")
def corpus_factory():
    """``corpus_factory(root)``: a :class:`Corpus` in any folder (for conversions shared by several tests)."""
    return Corpus


@pytest.fixture
def bytes_path():
    """``bytes_path(folder, b'name')``: a str path whose file name holds raw (maybe non-UTF-8) bytes."""

    def make(folder: Path, name: bytes) -> Path:
        return Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))

    return make
