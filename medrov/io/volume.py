"""3D volumes (NIfTI via nibabel, DICOM series via pydicom) with explicit geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medrov.errors import SourceReadError
from medrov.io.geometry import SLICE_AXCODES, Volume, reorient  # noqa: F401 - re-exported: readers and callers use this module
from medrov.io.geometry import check_finite as _check_finite


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 4 and array.shape[3] == 1:
        return array[..., 0]
    if array.ndim == 2:
        return array[..., None]
    if array.ndim != 3:
        raise SourceReadError(
            f"{array.ndim}D volume of shape {tuple(array.shape)} is not supported: give one 3D volume per file",
            path,
        )
    return array


# default memory budget of one volume when the caller gives none (params: data.max_volume_bytes)
MAX_VOLUME_BYTES = 2 * 1024**3


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _check_claimed_size(img: Any, path: Path, max_bytes: int) -> None:
    """Refuse a header that claims more voxel bytes than the file holds or than the budget, before allocating.

    nibabel allocates the size the header claims: a 368-byte file claiming 3 GB would otherwise cost 3 GB.
    """
    shape = tuple(int(n) for n in img.shape)
    dtype = img.header.get_data_dtype()
    voxels = int(np.prod(shape, dtype=np.float64))
    need = voxels * int(dtype.itemsize)
    proxy = img.dataobj
    scaled = float(getattr(proxy, "slope", 1.0) or 1.0) != 1.0 or float(getattr(proxy, "inter", 0.0) or 0.0) != 0.0
    memory = voxels * 8 if scaled else need  # scaled voxels come back as float64
    if memory > max_bytes:
        raise SourceReadError(
            f"header claims {shape} {dtype} = {_mib(memory)} in memory, over the memory budget data.max_volume_bytes ({_mib(max_bytes)})",  # noqa: E501
            path,
        )
    image_file = Path(img.file_map["image"].filename or path)
    offset = int(img.header.get_data_offset())
    try:
        size = image_file.stat().st_size
        if image_file.name.lower().endswith(".gz"):
            with open(image_file, "rb") as fh:  # gzip's trailer holds the uncompressed size modulo 2**32
                fh.seek(-4, 2)
                holds = int.from_bytes(fh.read(4), "little")
            if offset + need >= 2**32:
                return
        else:
            holds = size
    except OSError:
        return  # nibabel reports the unreadable file
    if offset + need > holds:
        raise SourceReadError(
            f"header claims {shape} {dtype} = {offset + need} bytes but the file holds {holds}: truncated or forged header",  # noqa: E501
            path,
        )


def read_nifti(path: str | Path, max_bytes: int | None = None) -> Volume:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) with nibabel.

    Args:
        max_bytes: memory budget for the voxel array; a header claiming more (or more than the file holds) is
            refused before anything is allocated.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise SourceReadError(f"cannot read NIfTI ({type(exc).__name__}: {exc})", path) from exc
    _check_claimed_size(img, path, MAX_VOLUME_BYTES if max_bytes is None else max_bytes)
    try:
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise SourceReadError(f"cannot read NIfTI ({type(exc).__name__}: {exc})", path) from exc
    array = _as_3d(array, path)
    _check_finite(array, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SourceReadError("affine is singular or not finite", path)
    return Volume(array, affine, path, {"format": "nifti"})


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_dicom_series(path: str | Path, max_bytes: int | None = None) -> Volume:
    """Read one DICOM series (a folder of single-frame slices, or one file) into a RAS+ volume.

    Slices are ordered by their position along the slice normal (not by file name or InstanceNumber), and
    rescale slope/intercept are applied, so CT values are in HU.
    """
    import pydicom

    folder = Path(path)
    if folder.is_dir():
        files = _dicom_files(folder)
    elif folder.is_file():
        files = [folder]
    else:
        raise SourceReadError("DICOM path not found", folder)
    slices = []
    for file in files:
        try:
            ds = pydicom.dcmread(file)
        except Exception as exc:
            raise SourceReadError(f"cannot read DICOM file {file.name} ({type(exc).__name__}: {exc})", folder) from exc
        if "PixelData" in ds:
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise SourceReadError(
                    f"multi-frame DICOM {file.name} is not supported: give single-frame slices", folder
                )
            slices.append((file, ds))
    if not slices:
        raise SourceReadError("no DICOM slice with pixel data in the folder", folder)
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        raise SourceReadError(f"{len(series)} series in one folder: give one series per folder", folder)
    try:
        iop = np.asarray(slices[0][1].ImageOrientationPatient, dtype=np.float64)
        row_spacing, col_spacing = (float(v) for v in slices[0][1].PixelSpacing)
    except AttributeError as exc:
        raise SourceReadError(f"missing geometry tag ({exc})", folder) from exc
    normal = np.cross(iop[:3], iop[3:])
    missing = [file.name for file, ds in slices if "ImagePositionPatient" not in ds]
    if missing:
        raise SourceReadError(f"ImagePositionPatient missing in {missing[:3]}: slices cannot be ordered", folder)
    positions = [float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal)) for _, ds in slices]
    order = np.argsort(positions)
    slices = [slices[i] for i in order]
    positions = [positions[i] for i in order]
    gaps = np.diff(positions)
    if len(gaps) and (np.any(gaps < 1e-3) or np.ptp(gaps) > 0.01 * max(abs(float(np.median(gaps))), 1e-3) + 1e-3):
        raise SourceReadError(
            f"irregular slice positions (gaps {np.min(gaps):.3g}..{np.max(gaps):.3g} mm): missing or duplicate slices",
            folder,
        )
    budget = MAX_VOLUME_BYTES if max_bytes is None else max_bytes
    need = int(slices[0][1].get("Rows", 0) or 0) * int(slices[0][1].get("Columns", 0) or 0) * len(slices) * 4
    if need > budget:  # decoded as float32; checked before any pixel data is decoded
        raise SourceReadError(
            f"series of {len(slices)} slices needs {_mib(need)}, over the memory budget data.max_volume_bytes ({_mib(budget)})",  # noqa: E501
            folder,
        )
    frames = []
    for file, ds in slices:
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            raise SourceReadError(f"cannot decode pixels of {file.name} ({type(exc).__name__}: {exc})", folder) from exc
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        # (rows, cols) -> (cols, rows): array axis 0 then runs along a row, matching IOP's first vector
        frames.append((pixels.astype(np.float32) * slope + intercept).T)
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise SourceReadError(f"slices of different sizes {sorted(shapes)}", folder)
    array = np.stack(frames, axis=-1)
    step = (
        (
            np.asarray(slices[-1][1].ImagePositionPatient, dtype=np.float64)
            - np.asarray(slices[0][1].ImagePositionPatient, dtype=np.float64)
        )
        / (len(slices) - 1)
        if len(slices) > 1
        else normal * float(slices[0][1].get("SliceThickness", 1) or 1)
    )
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing
    lps[:3, 1] = iop[3:] * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = np.asarray(slices[0][1].ImagePositionPatient, dtype=np.float64)
    # DICOM patient space is LPS+; NIfTI and everything downstream use RAS+
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    first = slices[0][1]
    meta = {
        "format": "dicom",
        "modality": str(first.get("Modality", "")),
        "patient_id": str(first.get("PatientID", "")),
        "series_uid": next(iter(series)),
    }
    return Volume(array, affine, folder, meta)


def read_volume(path: str | Path, max_bytes: int | None = None) -> Volume:
    """Read a NIfTI, MetaImage or NRRD file or a DICOM series folder (or a single DICOM file), chosen by the path.

    Args:
        max_bytes: memory budget of the voxel array of a NIfTI or DICOM volume (default :data:`MAX_VOLUME_BYTES`).
    """
    path = Path(path)
    if not path.exists():
        raise SourceReadError("file not found", path)
    if path.is_dir():
        return read_dicom_series(path, max_bytes)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".img", ".hdr")):
        return read_nifti(path, max_bytes)
    if name.endswith(".dcm"):
        return read_dicom_series(path, max_bytes)
    from medrov.io.sitk import is_sitk_file, read_sitk

    if is_sitk_file(path):
        return read_sitk(path)
    raise SourceReadError(
        "unknown volume format (expected .nii, .nii.gz, .mha, .mhd, .nrrd, a .dcm file or a DICOM folder)", path
    )
