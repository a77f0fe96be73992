"""Readers for MetaImage, NRRD, 4D NIfTI, MATLAB .mat, TIFF and GIF on hand-made files of known answer."""

from __future__ import annotations

import numpy as np
import pytest

from medrov.errors import SourceReadError
from medrov.io.frames import frame_count, read_volume_frame
from medrov.io.matlab import read_mat
from medrov.io.planar import read_plane
from medrov.io.sitk import read_sitk
from medrov.io.volume import read_volume

sitk = pytest.importorskip("SimpleITK")

SPACING = (0.5, 0.75, 2.0)
ORIGIN = (10.0, 20.0, 30.0)


def _zyx() -> np.ndarray:
    """A (k, j, i) = (3, 4, 5) array whose value encodes its index: 100 k + 10 j + i."""
    k, j, i = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    return (100 * k + 10 * j + i).astype(np.int16)


def _write(path, array, is_vector=False, compress=True):
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path), compress)
    return path


@pytest.mark.parametrize("name", ["case.mha", "Case00.mhd", "case_IMG_CT.nrrd", "case_OAR_Brainstem.seg.nrrd"])
def test_sitk_volume_geometry_and_values(tmp_path, name):
    path = _write(tmp_path / name, _zyx(), compress=not name.endswith(".mhd"))
    assert frame_count(path) == 1
    vol = read_sitk(path)
    assert vol.array.shape == (5, 4, 3)  # (i, j, k)
    assert vol.array[4, 3, 2] == 234 and vol.array[1, 2, 0] == 21
    # ITK's LPS origin/direction become RAS: x and y flip sign
    np.testing.assert_allclose(vol.affine[:3, :3], np.diag([-0.5, -0.75, 2.0]))
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, -20.0, 30.0])
    assert vol.axcodes == ("L", "P", "S")
    assert vol.spacing == pytest.approx(SPACING)
    # the generic reader dispatches there too
    np.testing.assert_array_equal(read_volume(path).array, vol.array)


def test_mhd_without_its_raw_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "Case01.mhd", _zyx(), compress=False)
    (tmp_path / "Case01.raw").unlink()
    with pytest.raises(SourceReadError, match="cannot read MetaImage/NRRD") as err:
        read_sitk(path)
    assert "Case01.mhd" in str(err.value)


def test_sitk_vector_image_needs_a_channel(tmp_path):
    two = np.stack([_zyx(), -_zyx()], axis=-1)  # 2 components per voxel
    path = _write(tmp_path / "multi.nrrd", two, is_vector=True)
    assert frame_count(path) == 2
    assert read_sitk(path, 1).array[4, 3, 2] == -234
    assert read_sitk(path, 0).array[4, 3, 2] == 234
    with pytest.raises(SourceReadError, match="must choose one"):
        read_sitk(path)
    with pytest.raises(SourceReadError, match="out of range"):
        read_sitk(path, 2)


def test_nifti_4d_frame_selection(tmp_path):
    import nibabel as nib

    data = np.zeros((4, 3, 2, 5), dtype=np.int16)
    for t in range(5):
        data[..., t] = t * 10
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    path = tmp_path / "patient001_4d.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    assert frame_count(path) == 5
    vol = read_volume_frame(path, 3)
    assert vol.array.shape == (4, 3, 2) and np.all(vol.array == 30)
    np.testing.assert_allclose(vol.affine, affine)
    with pytest.raises(SourceReadError, match="must choose one"):
        read_volume_frame(path)
    with pytest.raises(SourceReadError, match="out of range"):
        read_volume_frame(path, 5)
    three = tmp_path / "frame01.nii.gz"
    nib.save(nib.Nifti1Image(data[..., 0], affine), str(three))
    assert frame_count(three) == 1 and read_volume_frame(three).array.shape == (4, 3, 2)
    with pytest.raises(SourceReadError, match="volume is 3D"):
        read_volume_frame(three, 1)


def test_mat_v5_and_v73(tmp_path):
    import h5py
    import scipy.io

    inst = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.int32)
    scipy.io.savemat(tmp_path / "train_1.mat", {"inst_map": inst, "type_map": inst * 3})
    np.testing.assert_array_equal(read_mat(tmp_path / "train_1.mat", "inst_map"), inst)
    with pytest.raises(SourceReadError, match=r"no variable 'nope'.*inst_map.*type_map"):
        read_mat(tmp_path / "train_1.mat", "nope")
    # MATLAB v7.3 is HDF5 behind a 512-byte user block holding MATLAB's header text, with the axes reversed
    with h5py.File(tmp_path / "v73.mat", "w", userblock_size=512) as fh:
        fh["inst_map"] = inst.T
    with open(tmp_path / "v73.mat", "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    np.testing.assert_array_equal(read_mat(tmp_path / "v73.mat", "inst_map"), inst)
    with h5py.File(tmp_path / "bare.mat", "w") as fh:
        fh["inst_map"] = inst.T
    np.testing.assert_array_equal(read_mat(tmp_path / "bare.mat", "inst_map"), inst)
    np.testing.assert_array_equal(read_plane(tmp_path / "train_1.mat", key="type_map").array, inst * 3)


def test_tiff_masks_single_and_multipage(tmp_path):
    import tifffile

    mask = np.zeros((6, 8), dtype=np.uint16)
    mask[1:3, 2:5] = 1000
    tifffile.imwrite(tmp_path / "IDRiD_01_OD.tif", mask)
    plane = read_plane(tmp_path / "IDRiD_01_OD.tif", as_mask=True)
    assert plane.array.dtype == np.uint16 and plane.array.shape == (6, 8)
    np.testing.assert_array_equal(plane.array, mask)
    stack = np.stack([mask * 0, mask, mask // 2])
    tifffile.imwrite(tmp_path / "pages.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_plane(tmp_path / "pages.tif", frame=2).array, mask // 2)
    assert frame_count(tmp_path / "pages.tif") == 3 and frame_count(tmp_path / "IDRiD_01_OD.tif") == 1
    with pytest.raises(SourceReadError, match="3 pages/frames"):
        read_plane(tmp_path / "pages.tif")


def test_gif_palette_mask_keeps_grey_levels(tmp_path):
    from PIL import Image

    mask = np.zeros((5, 7), dtype=np.uint8)
    mask[2:4, 1:6] = 255
    Image.fromarray(mask).convert("P").save(tmp_path / "21_manual1.gif")
    np.testing.assert_array_equal(read_plane(tmp_path / "21_manual1.gif", as_mask=True).array, mask)
    frames = [Image.fromarray(mask * 0).convert("P"), Image.fromarray(mask).convert("P")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    np.testing.assert_array_equal(read_plane(tmp_path / "anim.gif", frame=1, as_mask=True).array, mask)
    assert frame_count(tmp_path / "anim.gif") == 2
    with pytest.raises(SourceReadError, match="2 pages/frames"):
        read_plane(tmp_path / "anim.gif", as_mask=True)


def test_unknown_2d_format_names_the_file(tmp_path):
    (tmp_path / "x.webm").write_bytes(b"\0")
    with pytest.raises(SourceReadError, match="unknown 2D image format") as err:
        read_plane(tmp_path / "x.webm")
    assert "x.webm" in str(err.value)
