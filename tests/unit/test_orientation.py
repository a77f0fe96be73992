"""Volume geometry: reorientation by the affine, NIfTI reading and its checks, a real DICOM series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medrov.errors import SourceReadError
from medrov.io.volume import SLICE_AXCODES, Volume, read_nifti, read_volume, reorient

SPACING = (2.0, 3.0, 5.0)
SHAPE = (6, 7, 8)
MARK = (1, 2, 3)  # a distinctive voxel in RAS index space


def _ras_array() -> np.ndarray:
    array = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    array[MARK] = 10_000.0
    return array


def _ras_affine() -> np.ndarray:
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 20.0, -30.0)
    return affine


def _lps_version(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored flipped in x and y, with the affine that says so (as demo._save_nifti does)."""
    flipped = np.ascontiguousarray(array[::-1, ::-1, :])
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, array.shape[0] - 1
    flip[1, 1], flip[1, 3] = -1.0, array.shape[1] - 1
    return flipped, affine @ flip


def _world(affine: np.ndarray, index) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


def _mark_index(array: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(array)), array.shape))


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


# ---------------------------------------------------------------- reorient


def test_ras_and_lps_storage_reorient_to_identical_volumes():
    ras = Volume(_ras_array(), _ras_affine(), Path("ras.nii.gz"))
    lps_array, lps_affine = _lps_version(ras.array, ras.affine)
    lps = Volume(lps_array, lps_affine, Path("lps.nii.gz"))
    assert ras.axcodes == ("R", "A", "S")
    assert lps.axcodes == ("L", "P", "S")
    # both affines place the distinctive voxel at the same world point (the construction is right)
    np.testing.assert_allclose(_world(lps.affine, _mark_index(lps.array)), _world(ras.affine, MARK))

    a, b = reorient(ras), reorient(lps)
    assert a.axcodes == SLICE_AXCODES == ("L", "P", "S")
    assert b.axcodes == ("L", "P", "S")
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)
    # the LPS-stored one was already in slice orientation: unchanged
    np.testing.assert_array_equal(b.array, lps.array)
    np.testing.assert_allclose(b.affine, lps.affine)


def test_reorient_flips_ras_and_keeps_world_positions():
    ras = Volume(_ras_array(), _ras_affine(), Path("ras.nii.gz"), {"k": "v"})
    out = reorient(ras)
    nx, ny, _ = SHAPE
    assert out.array.shape == SHAPE
    assert _mark_index(out.array) == (nx - 1 - MARK[0], ny - 1 - MARK[1], MARK[2])
    # every voxel keeps its world position: check the mark and two corners
    np.testing.assert_allclose(_world(out.affine, _mark_index(out.array)), _world(ras.affine, MARK))
    np.testing.assert_allclose(_world(out.affine, (0, 0, 0)), _world(ras.affine, (nx - 1, ny - 1, 0)))
    np.testing.assert_allclose(_world(out.affine, (nx - 1, ny - 1, 7)), _world(ras.affine, (0, 0, 7)))
    assert out.spacing == pytest.approx(SPACING)
    assert out.meta == {"k": "v"}
    assert out.path == ras.path


def test_reorient_permuted_axes_back_to_the_same_array():
    ras = Volume(_ras_array(), _ras_affine(), Path("ras.nii.gz"))
    # stored as (z, y, x): array index (k, j, i) holds RAS voxel (i, j, k)
    zyx = np.ascontiguousarray(ras.array.transpose(2, 1, 0))
    perm = np.zeros((4, 4))
    perm[0, 2] = perm[1, 1] = perm[2, 0] = perm[3, 3] = 1.0
    permuted = Volume(zyx, ras.affine @ perm, Path("zyx.nii.gz"))
    assert permuted.axcodes == ("S", "A", "R")
    assert permuted.spacing == pytest.approx(SPACING[::-1])
    np.testing.assert_allclose(_world(permuted.affine, _mark_index(zyx)), _world(ras.affine, MARK))

    a, b = reorient(ras), reorient(permuted)
    assert b.axcodes == ("L", "P", "S")
    assert b.array.shape == SHAPE
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)
    assert b.spacing == pytest.approx(SPACING)


def test_reorient_to_other_axcodes():
    ras = Volume(_ras_array(), _ras_affine(), Path("ras.nii.gz"))
    out = reorient(ras, ("R", "A", "S"))
    np.testing.assert_array_equal(out.array, ras.array)
    np.testing.assert_allclose(out.affine, ras.affine)


def test_reorient_of_nifti_files_on_disk(tmp_path):
    ras_array, ras_affine = _ras_array(), _ras_affine()
    lps_array, lps_affine = _lps_version(ras_array, ras_affine)
    a = reorient(read_volume(_save(ras_array, ras_affine, tmp_path / "ras.nii.gz")))
    b = reorient(read_volume(_save(lps_array, lps_affine, tmp_path / "lps.nii")))
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.affine, b.affine)


# ---------------------------------------------------------------- read_nifti / read_volume


def test_read_nifti_round_trip_keeps_values_and_spacing(tmp_path):
    array = _ras_array().astype(np.int16)
    path = _save(array, _ras_affine(), tmp_path / "vol.nii.gz")
    vol = read_nifti(path)
    assert vol.array.shape == SHAPE
    np.testing.assert_array_equal(vol.array, array)
    assert vol.spacing == pytest.approx(SPACING)
    np.testing.assert_allclose(vol.affine, _ras_affine())
    assert vol.meta["format"] == "nifti"
    assert vol.path == path


def test_read_volume_dispatches_nii_and_niigz(tmp_path):
    array = _ras_array()
    for name in ("a.nii", "b.nii.gz", "C.NII.GZ"):
        vol = read_volume(_save(array, _ras_affine(), tmp_path / name))
        np.testing.assert_array_equal(vol.array, array)


def test_4d_volume_with_several_frames_raises(tmp_path):
    path = _save(np.zeros((4, 5, 6, 3), dtype=np.float32), np.eye(4), tmp_path / "four.nii.gz")
    with pytest.raises(SourceReadError, match="4D") as err:
        read_volume(path)
    assert str(path) in str(err.value)


def test_4d_volume_with_one_frame_is_squeezed(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6, 1)
    vol = read_volume(_save(array, np.diag([1.5, 1.5, 4.0, 1.0]), tmp_path / "one.nii.gz"))
    assert vol.array.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.array, array[..., 0])
    assert vol.spacing == pytest.approx((1.5, 1.5, 4.0))


def test_nan_voxels_raise(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.float32)
    array[1, 2, 3] = np.nan
    path = _save(array, np.eye(4), tmp_path / "nan.nii.gz")
    with pytest.raises(SourceReadError, match="NaN") as err:
        read_volume(path)
    assert "1 of 120" in str(err.value)


def test_inf_voxels_raise(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.float32)
    array[0, 0, 0] = np.inf
    with pytest.raises(SourceReadError, match="inf"):
        read_volume(_save(array, np.eye(4), tmp_path / "inf.nii.gz"))


def test_missing_and_unknown_and_corrupt_files_raise(tmp_path):
    with pytest.raises(SourceReadError, match="not found"):
        read_volume(tmp_path / "missing.nii.gz")
    other = tmp_path / "vol.vtk"
    other.write_bytes(b"xx")
    with pytest.raises(SourceReadError, match="unknown volume format"):
        read_volume(other)
    # a MetaImage name is read by SimpleITK, which names the file it cannot parse
    with pytest.raises(SourceReadError, match="cannot read MetaImage/NRRD"):
        read_volume(other.rename(tmp_path / "vol.mha"))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"this is not a nifti file")
    with pytest.raises(SourceReadError, match="cannot read NIfTI"):
        read_volume(corrupt)


def test_singular_affine_raises(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), dtype=np.int16), None)
    img.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # a zero column: no valid voxel-to-world map
    img.header.set_qform(None, code=0)
    path = tmp_path / "flat.nii.gz"
    nib.save(img, str(path))
    with pytest.raises(SourceReadError, match="singular"):
        read_volume(path)


# ---------------------------------------------------------------- real data: TotalSegmentator DICOM series + label map


def test_totalsegmentator_dicom_and_label_map_share_a_grid(shared_data):
    folder = shared_data / "totalsegmentator"
    series, labels = folder / "example_ct_dicom", folder / "example_seg_dicom.nii.gz"
    if not series.is_dir() or not labels.is_file():
        pytest.skip("TotalSegmentator DICOM example not in the shared data folder")
    raw_ct = read_volume(series)
    ct = reorient(raw_ct)
    seg = reorient(read_volume(labels))
    assert raw_ct.meta["format"] == "dicom"
    assert raw_ct.meta["modality"] == "CT"
    assert ct.array.shape == seg.array.shape == (512, 512, 20)
    np.testing.assert_allclose(ct.affine, seg.affine, atol=1e-3)
    assert ct.axcodes == seg.axcodes == ("L", "P", "S")
    assert ct.spacing[2] > 0 and ct.spacing[0] == pytest.approx(ct.spacing[1])
    # rescale slope/intercept applied: air near -1000 HU, bone well above 500 HU
    assert ct.array.min() <= -900
    assert ct.array.max() > 500
    # the label map lies on the body, not on air: a flipped or transposed grid would break this
    fg = seg.array > 0
    assert fg.any()
    on_body = float((ct.array[fg] > -300).mean())
    assert on_body > 0.9
    assert on_body > float((ct.array[:, ::-1][fg] > -300).mean()) + 0.1


# ---------------------------------------------------------------- synthetic DICOM series (uncompressed, hand-made)


def _write_dicom_slice(path: Path, pixels: np.ndarray, z: float, series_uid: str, instance: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = "P001"
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-20.0, -30.0, z]
    ds.PixelSpacing = [0.5, 0.8]  # [between rows, between columns]
    ds.SliceThickness = 2.5
    ds.RescaleSlope = 2
    ds.RescaleIntercept = -1024
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _pixels(k: int) -> np.ndarray:
    """Slice k: value 100*k + 10*row + col on a 4-row, 5-column grid."""
    rows, cols = np.mgrid[:4, :5]
    return (100 * k + 10 * rows + cols).astype(np.int16)


def _series(folder: Path, zs: list[float], names: list[str]) -> Path:
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for k, (z, name) in enumerate(zip(zs, names)):
        _write_dicom_slice(folder / name, _pixels(k), z, uid, instance=len(zs) - k)
    return folder


def test_dicom_series_is_ordered_by_position_and_placed_by_its_affine(tmp_path):
    # file names and InstanceNumber run opposite to the slice position
    folder = _series(tmp_path / "ct", [10.0, 12.5, 15.0], ["c.dcm", "b.dcm", "a.dcm"])
    vol = read_volume(folder)
    assert vol.meta["format"] == "dicom" and vol.meta["modality"] == "CT" and vol.meta["patient_id"] == "P001"
    assert vol.array.shape == (5, 4, 3)  # (columns, rows, slices)
    for k in range(3):
        np.testing.assert_array_equal(vol.array[:, :, k], (_pixels(k).astype(np.float32) * 2 - 1024).T)
    assert vol.spacing == pytest.approx((0.8, 0.5, 2.5))
    # voxel (col c, row r, slice k) sits at LPS IPP + c*0.8*x + r*0.5*y, z_k; in RAS x and y change sign
    for c, r, k in [(0, 0, 0), (4, 3, 2), (2, 1, 1)]:
        lps = np.array([-20.0 + 0.8 * c, -30.0 + 0.5 * r, [10.0, 12.5, 15.0][k]])
        np.testing.assert_allclose(_world(vol.affine, (c, r, k)), lps * [-1, -1, 1])
    out = reorient(vol)
    assert out.axcodes == ("L", "P", "S")
    np.testing.assert_array_equal(out.array, vol.array)  # DICOM axial is already LPS


def test_dicom_single_file_gets_slice_thickness(tmp_path):
    folder = _series(tmp_path / "one", [7.0], ["only.dcm"])
    vol = read_volume(folder / "only.dcm")
    assert vol.array.shape == (5, 4, 1)
    assert vol.spacing == pytest.approx((0.8, 0.5, 2.5))


def test_dicom_missing_slice_raises(tmp_path):
    folder = _series(tmp_path / "gap", [0.0, 2.5, 7.5, 10.0], ["1.dcm", "2.dcm", "3.dcm", "4.dcm"])
    with pytest.raises(SourceReadError, match="irregular"):
        read_volume(folder)


def test_dicom_duplicate_slice_raises(tmp_path):
    folder = _series(tmp_path / "dup", [0.0, 2.5, 2.5, 5.0], ["1.dcm", "2.dcm", "3.dcm", "4.dcm"])
    with pytest.raises(SourceReadError, match="irregular"):
        read_volume(folder)


def test_dicom_two_series_in_one_folder_raise(tmp_path):
    _series(tmp_path / "mixed", [0.0, 2.5], ["a1.dcm", "a2.dcm"])
    _series(tmp_path / "mixed", [0.0, 2.5], ["b1.dcm", "b2.dcm"])
    with pytest.raises(SourceReadError, match="2 series"):
        read_volume(tmp_path / "mixed")
