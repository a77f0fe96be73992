"""MetaImage (``.mha``, ``.mhd`` + ``.raw``) and NRRD (``.nrrd``, ``.seg.nrrd``) volumes through SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrov.errors import SourceReadError
from medrov.io.geometry import Volume, check_finite

SITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")


def is_sitk_file(path: str | Path) -> bool:
    """True for the file names this reader handles (``.seg.nrrd`` ends with ``.nrrd``)."""
    return str(path).lower().endswith(SITK_SUFFIXES)


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # a declared dependency; the message says how to get it back
        raise SourceReadError("reading MetaImage/NRRD needs SimpleITK: pip install SimpleITK", None) from exc
    return sitk


def read_sitk(path: str | Path, index: int | None = None) -> Volume:
    """Read a 3D (or 4D / multi-component, with ``index``) MetaImage or NRRD file into a RAS+ volume.

    Args:
        path: the ``.mha``/``.mhd``/``.nrrd`` file (an ``.mhd`` header finds its ``.raw`` itself).
        index: for a 4D image or a vector image (several components per voxel), which frame or channel to
            keep; required when there is more than one.

    Returns:
        A :class:`Volume` whose array is indexed ``(i, j, k)`` along the file's own axes and whose affine
        maps those indices to RAS+ millimetres.

    Raises:
        SourceReadError: unreadable file, a missing ``.raw``, a bad index, or NaN voxels.
    """
    sitk = _sitk()
    path = Path(path)
    if not path.is_file():
        raise SourceReadError("file not found", path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:  # SimpleITK raises RuntimeError for every I/O problem, incl. a missing .raw
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise SourceReadError(f"cannot read MetaImage/NRRD ({first})", path) from exc
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    # numpy order is (k, j, i[, component]) for a 3D image and (t, k, j, i) for a 4D one
    array = sitk.GetArrayFromImage(image)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    extra = None
    if dim == 4:
        extra, array = array.shape[0], np.moveaxis(array, 0, -1)
    elif dim == 2:
        array = array[None]
    elif dim != 3:
        raise SourceReadError(f"{dim}D image is not supported (expected 3D or 4D)", path)
    if components > 1:
        if extra is not None:
            raise SourceReadError(f"4D image with {components} components per voxel is not supported", path)
        extra = components
    if extra is not None:
        if index is None:
            if extra != 1:
                raise SourceReadError(f"{extra} frames/channels: the recipe must choose one (channel/frames)", path)
            index = 0
        if not 0 <= index < extra:
            raise SourceReadError(f"frame/channel {index} out of range (the file has {extra})", path)
        array = array[..., index]
    elif index not in (None, 0):
        raise SourceReadError(f"frame/channel {index} requested but the file is a single 3D volume", path)
    # (k, j, i) -> (i, j, k): the affine's columns then follow the array axes, as for NIfTI
    array = np.ascontiguousarray(array.transpose(2, 1, 0))
    check_finite(array, path)
    lps = np.eye(4)
    d3 = np.eye(3)
    d3[: min(dim, 3), : min(dim, 3)] = direction[:3, :3] if dim >= 3 else direction
    sp3 = np.ones(3)
    sp3[: min(dim, 3)] = spacing[:3]
    or3 = np.zeros(3)
    or3[: min(dim, 3)] = origin[:3]
    lps[:3, :3] = d3 * sp3
    lps[:3, 3] = or3
    # ITK physical space is LPS+; everything downstream uses RAS+
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise SourceReadError("direction/spacing matrix is singular", path)
    fmt = "nrrd" if path.name.lower().endswith((".nrrd", ".nhdr")) else "metaimage"
    return Volume(array, affine, path, {"format": fmt, "frames": extra})
