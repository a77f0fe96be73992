"""Volumes with a 4th axis (cine time, MRI sequences): read one 3D frame or channel of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrov.errors import SourceReadError
from medrov.io.geometry import Volume, check_finite
from medrov.io.volume import read_volume


def frame_count(path: str | Path) -> int:
    """Length of the 4th axis (frames or channels) of a file, 1 for a plain 3D volume or single-page image.

    Reads headers only: NIfTI through nibabel, MetaImage/NRRD through SimpleITK's image information, TIFF pages
    through tifffile, GIF frames through Pillow.
    """
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(path)).shape
            return int(shape[3]) if len(shape) >= 4 else 1
        from medrov.io.sitk import is_sitk_file

        if is_sitk_file(path):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if reader.GetDimension() == 4:
                return int(reader.GetSize()[3])
            return int(reader.GetNumberOfComponents())
        if name.endswith((".tif", ".tiff")):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.series[0].shape
            stacked = len(shape) == 4 or (len(shape) == 3 and shape[-1] not in (3, 4))
            return int(shape[0]) if stacked else 1
        if name.endswith(".gif"):
            from PIL import Image

            with Image.open(path) as img:
                return int(getattr(img, "n_frames", 1))
    except SourceReadError:
        raise
    except Exception as exc:  # each library raises its own types for corrupt headers
        raise SourceReadError(f"cannot read the header ({type(exc).__name__}: {exc})", path) from exc
    return 1


def _read_nifti_frame(path: Path, index: int | None) -> Volume:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) == 4 and shape[3] > 1:
            if index is None:
                raise SourceReadError(f"4D volume with {shape[3]} frames/channels: the recipe must choose one", path)
            if not 0 <= index < shape[3]:
                raise SourceReadError(f"frame/channel {index} out of range (the file has {shape[3]})", path)
            # slicing the proxy reads only that frame from disk
            array = np.asanyarray(img.dataobj[..., index])
        else:
            if index not in (None, 0):
                raise SourceReadError(f"frame/channel {index} requested but the volume is 3D", path)
            return read_volume(path)
    except SourceReadError:
        raise
    except Exception as exc:
        raise SourceReadError(f"cannot read NIfTI ({type(exc).__name__}: {exc})", path) from exc
    check_finite(array, path)
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SourceReadError("affine is singular or not finite", path)
    return Volume(array, affine, path, {"format": "nifti", "frames": int(shape[3]), "index": index})


def read_volume_frame(path: str | Path, index: int | None = None) -> Volume:
    """One 3D volume of any supported file; ``index`` picks the frame/channel of a 4D one.

    Args:
        path: NIfTI, MetaImage, NRRD, a DICOM file or series folder.
        index: position along the 4th axis (time of a cine series, channel of a multi-sequence MRI); a 3D
            file accepts only ``None`` or 0.

    Raises:
        SourceReadError: unreadable file, or a 4D file without a valid ``index``.
    """
    from medrov.io.sitk import is_sitk_file, read_sitk

    path = Path(path)
    if not path.exists():
        raise SourceReadError("file not found", path)
    if is_sitk_file(path):
        return read_sitk(path, index)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _read_nifti_frame(path, index)
    if index not in (None, 0):
        raise SourceReadError(f"frame/channel {index} requested for a format without a 4th axis", path)
    return read_volume(path)
