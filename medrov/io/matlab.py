"""MATLAB ``.mat`` annotation maps (CoNSeP/CPM-17 ``inst_map``, ``type_map``...) via scipy.io, or h5py for v7.3."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medrov.errors import SourceReadError


def read_mat(path: str | Path, key: str) -> np.ndarray:
    """One variable of a ``.mat`` file as a numpy array in (rows, cols) order.

    Args:
        path: the ``.mat`` file (MATLAB v5/v7 through ``scipy.io.loadmat``, v7.3 HDF5 through ``h5py``).
        key: the variable name, e.g. ``inst_map``.

    Raises:
        SourceReadError: unreadable file, or no variable ``key`` (the message lists the ones there are).
    """
    path = Path(path)
    if not path.is_file():
        raise SourceReadError("file not found", path)
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:  # scipy's answer to a v7.3 file
        return _read_mat73(path, key)
    except (OSError, ValueError, TypeError) as exc:
        if _is_hdf5(path):  # an HDF5 file without MATLAB's 128-byte header text
            return _read_mat73(path, key)
        raise SourceReadError(f"cannot read MATLAB file ({type(exc).__name__}: {exc})", path) from exc
    names = sorted(k for k in data if not k.startswith("__"))
    if key not in data:
        raise SourceReadError(f"no variable {key!r} in the .mat file (it has {names})", path)
    return np.asarray(data[key])


def _is_hdf5(path: Path) -> bool:
    # the HDF5 signature sits at offset 0 or after a user block of 512 * 2^n bytes (MATLAB writes 512)
    signature = b"\x89HDF\r\n\x1a\n"
    try:
        with open(path, "rb") as fh:
            return any(fh.seek(offset) == offset and fh.read(8) == signature for offset in (0, 512, 1024, 2048))
    except OSError:
        return False


def _read_mat73(path: Path, key: str) -> np.ndarray:
    try:
        import h5py
    except ImportError as exc:
        raise SourceReadError("MATLAB v7.3 file: reading it needs h5py (pip install h5py)", path) from exc
    try:
        with h5py.File(path, "r") as fh:
            if key not in fh:
                raise SourceReadError(f"no variable {key!r} in the .mat file (it has {sorted(fh.keys())})", path)
            array = np.asarray(fh[key])
    except OSError as exc:
        raise SourceReadError(f"cannot read MATLAB v7.3 file ({exc})", path) from exc
    # HDF5 stores MATLAB's column-major arrays with the axes reversed: transpose back to (rows, cols)
    return np.ascontiguousarray(array.T)
