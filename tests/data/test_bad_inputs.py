"""One bad input among good ones: it is quarantined with a reason naming it, everything else converts.

Every test breaks exactly one input of a small valid source (see conftest.py) and checks the contract of
``convert.run``: the bad input is in quarantine.csv (level ``input``, action ``quarantined``) with a reason
that says what is wrong and names the file; every other input is converted and on disk; converted +
quarantined == total == inputs found. Box-level problems (clipped/dropped boxes) do not quarantine the image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest


def _garbage(path: Path, n: int = 3000, seed: int = 0) -> None:
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ---------------------------------------------------------------- NIfTI volumes


def test_corrupt_nifti(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]["image"]
    _garbage(bad)
    corpus.run(data_params).expect_one_bad(bad, ["cannot read NIfTI"], good=2)


def test_truncated_nifti(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]["image"]
    _truncate(bad)
    corpus.run(data_params).expect_one_bad(bad, ["cannot read NIfTI"], good=2)


def test_truncated_nifti_label(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_002"]["label"]
    _truncate(bad)
    corpus.run(data_params).expect_one_bad(bad, ["cannot read NIfTI"], good=2)


def test_nan_voxels(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_000"]["image"]
    ct, _ = corpus.ct_volume(0)
    ct = ct.astype(np.float32)
    ct[3, 4, 2] = np.nan
    ct[5, 6, 3] = np.inf
    corpus.save_nifti(bad, ct)
    row = corpus.run(data_params).expect_one_bad(bad, ["NaN", "2 of"], good=2)
    assert row["input"] == str(bad)


def test_image_mask_shape_mismatch(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]
    _, label = corpus.ct_volume(1)
    corpus.save_nifti(bad["label"], label[:, :, :5])
    row = corpus.run(data_params).expect_one_bad(bad["image"], ["shape mismatch", "(32, 32, 6)", "(32, 32, 5)"], good=2)
    assert row["input"] == str(bad["image"])


def test_image_mask_affine_mismatch(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_002"]
    _, label = corpus.ct_volume(2)
    corpus.save_nifti(bad["label"], label, corpus.ras_affine(origin=(12.0, 0.0, 0.0)))  # same shape, 8 voxels off
    corpus.run(data_params).expect_one_bad(bad["image"], ["affine mismatch", "same grid"], good=2)


def test_4d_volume(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]["image"]
    ct, _ = corpus.ct_volume(1)
    corpus.save_nifti(bad, np.stack([ct, ct], axis=-1))
    corpus.run(data_params).expect_one_bad(bad, ["4D volume", "not supported"], good=2)


def test_4d_volume_with_one_timepoint_is_accepted(corpus, data_params):
    """(x, y, z, 1) is a 3D volume in disguise: it converts like the others."""
    src = corpus.nifti_ct(n=3)
    item = src.items["case_001"]
    ct, _ = corpus.ct_volume(1)
    corpus.save_nifti(item["image"], ct[..., None])
    result = corpus.run(data_params)
    assert result.summary["converted"] == 3 and result.summary["quarantined"] == 0


def test_empty_mask(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_000"]["label"]
    corpus.save_nifti(bad, np.zeros((32, 32, 6), dtype=np.uint8))
    row = corpus.run(data_params).expect_one_bad(bad, ["empty mask"], good=2)
    assert row["input"] == str(src.items["case_000"]["image"])


def test_unknown_label_ids(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_002"]["label"]
    _, label = corpus.ct_volume(2)
    label[2:5, 2:5, 2] = 7
    corpus.save_nifti(bad, label)
    corpus.run(data_params).expect_one_bad(bad, ["unknown label ids [7]", "TinyCT"], good=2)


def test_float_label_with_fractions(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]["label"]
    _, label = corpus.ct_volume(1)
    corpus.save_nifti(bad, label.astype(np.float32) * 0.5)
    corpus.run(data_params).expect_one_bad(bad, ["non-integer"], good=2)


def test_volume_without_label_file(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]
    bad["label"].unlink()
    row = corpus.run(data_params).expect_one_bad(bad["image"], ["no label volume"], good=2)
    assert row["input"] == str(bad["image"])


# ---------------------------------------------------------------- DICOM series


def test_corrupt_dicom_file_in_series(corpus, data_params):
    src = corpus.dicom_ct(n=3)
    series = src.items["series_001"]
    bad = series["slice_002.dcm"]
    _garbage(bad)
    row = corpus.run(data_params).expect_one_bad(bad, ["cannot read DICOM file", "slice_002.dcm"], good=2)
    assert row["input"] == str(series["image"])


def test_truncated_dicom_file_in_series(corpus, data_params):
    src = corpus.dicom_ct(n=3)
    series = src.items["series_000"]
    bad = series["slice_004.dcm"]
    _truncate(bad, 0.6)  # header intact, pixel data cut short
    row = corpus.run(data_params).expect_one_bad(bad, ["slice_004.dcm"], good=2)
    assert row["input"] == str(series["image"])


def test_dicom_series_with_missing_slice(corpus, data_params):
    src = corpus.dicom_ct(n=3)
    series = src.items["series_002"]
    series["slice_002.dcm"].unlink()
    row = corpus.run(data_params).expect_one_bad(series["image"], ["irregular slice positions", "missing"], good=2)
    assert row["input"] == str(series["image"])


# ---------------------------------------------------------------- corrupt 2D images, in every 2D format


_IMAGE_OF = {"voc": "img_001", "coco": "smear_001", "csv": "cxr_001", "mask2d": "frame_001", "yolo": "cells_001"}


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
@pytest.mark.parametrize("fmt", sorted(_IMAGE_OF))
def test_corrupt_2d_image(corpus, data_params, fmt, damage):
    src = getattr(corpus, fmt)(n=3)
    bad = src.items[_IMAGE_OF[fmt]]["image"]
    _truncate(bad, 0.5) if damage == "truncated" else _garbage(bad)
    row = corpus.run(data_params).expect_one_bad(bad, ["cannot read image"], good=2)
    assert row["input"] == str(bad)


def test_corrupt_mask_png(corpus, data_params):
    src = corpus.mask2d(n=3)
    bad = src.items["frame_002"]["mask"]
    _truncate(bad)
    corpus.run(data_params).expect_one_bad(bad, ["cannot read image"], good=2)


def test_mask2d_shape_mismatch(corpus, data_params):
    src = corpus.mask2d(n=3)
    bad = src.items["frame_000"]["mask"]
    corpus.save_image(bad, np.full((20, 40), 255, dtype=np.uint8))
    corpus.run(data_params).expect_one_bad(bad, ["shape mismatch"], good=2)


# ---------------------------------------------------------------- annotation problems


def test_unknown_class_voc(corpus, data_params):
    src = corpus.voc(n=3)
    bad = src.items["img_001"]["xml"]
    bad.write_text(corpus.voc_xml("img_001.jpg", 64, 48, [("RBC", 11, 9, 24, 20), ("Neutrophil", 31, 25, 50, 40)]))
    corpus.run(data_params).expect_one_bad(bad, ["unknown label 'Neutrophil'", "TinyVOC"], good=2)


def test_unknown_class_coco(corpus, data_params):
    src = corpus.coco(n=3)
    ann_file = src.root / "annotations.json"
    data = json.loads(ann_file.read_text())
    data["categories"].append({"id": 3, "name": "Neutrophil"})
    data["annotations"].append({"id": 99, "image_id": 2, "category_id": 3, "bbox": [2, 2, 5, 5]})
    ann_file.write_text(json.dumps(data))
    bad = src.items["smear_001"]["image"]
    row = corpus.run(data_params).expect_one_bad(bad, ["unknown label 'Neutrophil'"], good=2)
    assert row["input"] == str(bad)


def test_unknown_class_csv(corpus, data_params):
    src = corpus.csv(n=3)
    csv_file = src.root / "boxes.csv"
    csv_file.write_text(csv_file.read_text() + "cxr_002.png,pneumothorax,1,1,9,9\n")
    bad = src.items["cxr_002"]["image"]
    row = corpus.run(data_params).expect_one_bad(bad, ["unknown label 'pneumothorax'", "boxes.csv:8"], good=2)
    assert row["input"] == str(bad)


def test_unknown_class_id_yolo(corpus, data_params):
    src = corpus.yolo(n=3)
    bad = src.items["cells_000"]["label"]
    bad.write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    corpus.run(data_params).expect_one_bad(bad, ["unknown class id 5"], good=2)


def test_malformed_yolo_line(corpus, data_params):
    src = corpus.yolo(n=3)
    bad = src.items["cells_002"]["label"]
    bad.write_text("0 0.5 0.5 0.2\n")
    corpus.run(data_params).expect_one_bad(bad, ["line 1", "class xc yc w h"], good=2)


def test_non_numeric_csv_box(corpus, data_params):
    src = corpus.csv(n=3)
    csv_file = src.root / "boxes.csv"
    csv_file.write_text(
        csv_file.read_text().replace("cxr_001.png,lung nodule,12,10", "cxr_001.png,lung nodule,twelve,10")
    )
    corpus.run(data_params).expect_one_bad(src.items["cxr_001"]["image"], ["non-numeric box", "boxes.csv"], good=2)


def test_malformed_voc_xml(corpus, data_params):
    src = corpus.voc(n=3)
    bad = src.items["img_002"]["xml"]
    bad.write_text("<annotation><filename>img_002.jpg</filename><object><name>RBC</name>\n")
    corpus.run(data_params).expect_one_bad(bad, ["malformed XML"], good=2)


def test_voc_object_without_bndbox(corpus, data_params):
    src = corpus.voc(n=3)
    bad = src.items["img_000"]["xml"]
    bad.write_text("<annotation><filename>img_000.jpg</filename><object><name>RBC</name></object></annotation>\n")
    corpus.run(data_params).expect_one_bad(bad, ["no bndbox"], good=2)


def test_voc_image_without_annotation(corpus, data_params):
    src = corpus.voc(n=3)
    orphan = corpus.save_image(src.root / "JPEGImages" / "img_999.jpg", corpus.rgb_image(9))
    row = corpus.run(data_params).expect_one_bad(orphan, ["no annotation XML"], good=3, total=4)
    assert row["input"] == str(orphan)


def test_voc_annotation_without_image(corpus, data_params):
    src = corpus.voc(n=3)
    bad = src.items["img_001"]["image"]
    bad.unlink()
    corpus.run(data_params).expect_one_bad(bad, ["image file not found"], good=2)


def test_coco_image_file_missing(corpus, data_params):
    src = corpus.coco(n=3)
    bad = src.items["smear_002"]["image"]
    bad.unlink()
    row = corpus.run(data_params).expect_one_bad(bad, ["image file not found"], good=2)
    assert row["input"] == str(bad)


def test_coco_declared_size_differs(corpus, data_params):
    src = corpus.coco(n=3)
    ann_file = src.root / "annotations.json"
    data = json.loads(ann_file.read_text())
    data["images"][0]["width"] = 128
    ann_file.write_text(json.dumps(data))
    corpus.run(data_params).expect_one_bad(src.items["smear_000"]["image"], ["COCO says 128x48", "64x48"], good=2)


def test_coco_annotation_for_unknown_image_id(corpus, data_params):
    """An annotation whose image id is not listed is an input of its own: reported, the images convert."""
    src = corpus.coco(n=3)
    ann_file = src.root / "annotations.json"
    data = json.loads(ann_file.read_text())
    data["annotations"].append({"id": 77, "image_id": 42, "category_id": 1, "bbox": [2, 2, 5, 5]})
    ann_file.write_text(json.dumps(data))
    row = corpus.run(data_params).expect_one_bad(ann_file, ["unknown image id 42"], good=3, total=4)
    assert row["input"].endswith("annotations.json#annotation77")


def test_image_with_no_objects_is_quarantined(corpus, data_params):
    src = corpus.voc(n=3)
    bad = src.items["img_000"]["xml"]
    bad.write_text(corpus.voc_xml("img_000.jpg", 64, 48, []))
    corpus.run(data_params).expect_one_bad(bad, ["empty annotation"], good=2)


# ---------------------------------------------------------------- file names that are not UTF-8


def _non_utf8_volume(corpus, bytes_path):
    src = corpus.nifti_ct(n=2)
    ct, label = corpus.ct_volume(7)
    image = bytes_path(src.root / "images", b"case_\xff.nii.gz")
    label_path = bytes_path(src.root / "labels", b"case_\xff.nii.gz")
    corpus.save_nifti(image, ct)
    corpus.save_nifti(label_path, label)
    assert os.fsencode(image).endswith(b"case_\xff.nii.gz")
    return src, image


def _non_utf8_voc(corpus, bytes_path):
    src = corpus.voc(n=2)
    image = bytes_path(src.root / "JPEGImages", b"img_\xfe.jpg")
    xml = bytes_path(src.root / "Annotations", b"img_\xfe.xml")
    corpus.save_image(image, corpus.rgb_image(5))
    xml.write_text(corpus.voc_xml("", 64, 48, [("RBC", 11, 9, 24, 20)]))  # no <filename>: found by the stem
    return src, image


@pytest.mark.parametrize("build", [_non_utf8_volume, _non_utf8_voc], ids=["nifti", "voc"])
def test_non_utf8_file_name(corpus, data_params, bytes_path, build):
    """A file name with a byte that is not UTF-8 must not crash the run: it is converted or quarantined."""
    src, image = build(corpus, bytes_path)
    result = corpus.run(data_params)  # must not raise
    s = result.summary
    assert s["total"] == src.n + 1
    assert s["converted"] + s["quarantined"] == s["total"]
    assert s["converted"] >= src.n  # the good inputs are not collateral damage
    quarantined = result.rows("input")
    converted_inputs = set(result.manifest["input"])
    # whichever happened, the odd input is accounted for in exactly one place
    assert (str(image) in converted_inputs) != (len(quarantined) == 1)
    # the written tables are readable back and the outputs exist
    assert all((result.out / p).is_file() for p in result.manifest["image"])
    # a second run is stable
    again = corpus.run(data_params)
    assert again.summary["total"] == s["total"] and again.summary["converted"] == s["converted"]


# ---------------------------------------------------------------- box-level problems: the image still converts


def _label_lines(result, image_rel: str) -> list[list[float]]:
    label = result.out / image_rel.replace("images/", "labels/", 1).rsplit(".", 1)[0]
    return [[float(v) for v in line.split()] for line in Path(f"{label}.txt").read_text().splitlines()]


def _assert_box_note(result, action: str, where: str, words: list[str]) -> None:
    rows = result.rows("box")
    assert len(rows) == 1, rows.to_string()
    row = rows.iloc[0]
    assert row["action"] == action
    assert where in row["input"], row.to_dict()
    for word in words:
        assert word in row["reason"], row["reason"]
    assert len(result.rows("input")) == 0


def _with_bad_box(corpus, fmt: str, box: tuple[float, float, float, float]):
    """Add a box (pixel-edge x0, y0, x1, y1) to item 1 of a fresh source; returns (source, image, where)."""
    x0, y0, x1, y1 = box
    if fmt == "voc":
        src = corpus.voc(n=3)
        item = src.items["img_001"]
        item["xml"].write_text(
            corpus.voc_xml(
                "img_001.jpg",
                64,
                48,
                [("RBC", 11, 9, 24, 20), ("WBC", 31, 25, 50, 40), ("WBC", x0 + 1, y0 + 1, x1, y1)],
            )
        )
        return src, item["image"], str(item["xml"])
    if fmt == "coco":
        src = corpus.coco(n=3)
        ann_file = src.root / "annotations.json"
        data = json.loads(ann_file.read_text())
        data["annotations"].append({"id": 50, "image_id": 2, "category_id": 2, "bbox": [x0, y0, x1 - x0, y1 - y0]})
        ann_file.write_text(json.dumps(data))
        image = src.items["smear_001"]["image"]
        return src, image, str(image)
    if fmt == "csv":
        src = corpus.csv(n=3)
        csv_file = src.root / "boxes.csv"
        csv_file.write_text(csv_file.read_text() + f"cxr_001.png,lung mass,{x0:g},{y0:g},{x1:g},{y1:g}\n")
        image = src.items["cxr_001"]["image"]
        return src, image, str(image)
    if fmt == "yolo":
        src = corpus.yolo(n=3)
        item = src.items["cells_001"]
        w, h = 32, 32
        with open(item["label"], "a") as fh:
            fh.write(f"1 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}\n")
        return src, item["image"], str(item["label"])
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["voc", "coco", "csv", "yolo"])
def test_box_partly_outside_is_clipped(corpus, data_params, fmt):
    src, image, where = _with_bad_box(
        corpus, fmt, (20.0, 24.0, 90.0, 40.0) if fmt != "yolo" else (20.0, 24.0, 40.0, 30.0)
    )
    result = corpus.run(data_params)
    s = result.summary
    assert s["converted"] == s["total"] == src.n and s["quarantined"] == 0
    assert s["boxes_repaired"] == 1 and s["boxes_dropped"] == 0
    _assert_box_note(result, "clipped", where, ["extends outside", "clipped"])
    manifest = result.manifest
    rel = manifest.loc[manifest["input"] == str(image), "image"]
    assert len(rel) == 1 and (result.out / rel.iloc[0]).is_file()
    lines = _label_lines(result, rel.iloc[0])
    assert len(lines) == 3
    for cls, xc, yc, w, h in lines:
        assert 0 <= xc - w / 2 - 1e-6 and xc + w / 2 <= 1 + 1e-6
        assert 0 <= yc - h / 2 - 1e-6 and yc + h / 2 <= 1 + 1e-6
    boxes = result.boxes
    width = int(manifest.loc[manifest["input"] == str(image), "width"].iloc[0])
    clipped = boxes[(boxes["image"] == rel.iloc[0]) & (boxes["x1"] == width)]
    assert len(clipped) == 1 and clipped["x0"].iloc[0] == 20.0


@pytest.mark.parametrize("fmt", ["voc", "coco", "csv", "yolo"])
def test_box_entirely_outside_is_dropped(corpus, data_params, fmt):
    src, image, where = _with_bad_box(
        corpus, fmt, (70.0, 50.0, 90.0, 60.0) if fmt != "yolo" else (36.0, 4.0, 44.0, 12.0)
    )
    result = corpus.run(data_params)
    s = result.summary
    assert s["converted"] == s["total"] == src.n and s["quarantined"] == 0
    assert s["boxes_dropped"] == 1 and s["boxes_repaired"] == 0
    _assert_box_note(result, "dropped", where, ["lies outside"])
    manifest = result.manifest
    rel = manifest.loc[manifest["input"] == str(image), "image"].iloc[0]
    assert len(_label_lines(result, rel)) == 2
    assert int(manifest.loc[manifest["image"] == rel, "n_boxes"].iloc[0]) == 2


def test_zero_size_box_is_dropped(corpus, data_params):
    src = corpus.voc(n=3)
    item = src.items["img_002"]
    item["xml"].write_text(corpus.voc_xml("img_002.jpg", 64, 48, [("RBC", 11, 9, 24, 20), ("RBC", 30, 30, 30, 30)]))
    result = corpus.run(data_params)
    assert result.summary["converted"] == 3 and result.summary["boxes_dropped"] == 1
    _assert_box_note(result, "dropped", str(item["xml"]), ["zero or negative size"])


def test_box_only_outside_quarantines_the_image(corpus, data_params):
    """An image whose only box is dropped has no object left: with keep_empty_images=false it is quarantined."""
    src = corpus.voc(n=3)
    item = src.items["img_000"]
    item["xml"].write_text(corpus.voc_xml("img_000.jpg", 64, 48, [("RBC", 100, 100, 120, 120)]))
    result = corpus.run(data_params)
    result.expect_one_bad(item["xml"], ["empty annotation"], good=2)


# ---------------------------------------------------------------- more volume and source-level cases


def test_dicom_series_with_duplicate_slice(corpus, data_params):
    src = corpus.dicom_ct(n=2)
    series = src.items["series_000"]
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(series["slice_003.dcm"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(series["image"] / "slice_003_copy.dcm")
    corpus.run(data_params).expect_one_bad(series["image"], ["irregular slice positions", "duplicate"], good=1)


def test_two_dicom_series_in_one_folder(corpus, data_params):
    src = corpus.dicom_ct(n=2)
    series = src.items["series_001"]
    ct, _ = corpus.ct_volume(3)
    extra = corpus.write_dicom_series(series["image"] / "other", ct, series_seed=99)
    assert extra
    corpus.run(data_params).expect_one_bad(series["image"], ["2 series in one folder"], good=1)


def test_stray_non_dicom_file_in_series_folder(corpus, data_params):
    """A series folder holds DICOM files only: a stray file is named in the reason (the series is quarantined)."""
    src = corpus.dicom_ct(n=2)
    series = src.items["series_000"]
    (series["image"] / "notes.txt").write_text("scanned on tuesday\n")
    corpus.run(data_params).expect_one_bad(series["image"], ["notes.txt"], good=1)


def test_unreadable_coco_json_quarantines_the_source_file(corpus, data_params):
    coco = corpus.coco(n=3)
    corpus.voc(n=2)
    ann_file = coco.root / "annotations.json"
    _truncate(ann_file)
    row = corpus.run(data_params).expect_one_bad(ann_file, ["cannot read COCO JSON"], good=2)
    assert row["source"] == "TinyCOCO" and row["input"] == str(ann_file)


def test_csv_without_required_columns(corpus, data_params):
    src = corpus.csv(n=3)
    corpus.yolo(n=2)
    csv_file = src.root / "boxes.csv"
    csv_file.write_text(csv_file.read_text().replace("image,label,x1,y1,x2,y2", "file,label,x1,y1,x2,y2"))
    row = corpus.run(data_params).expect_one_bad(csv_file, ["CSV lacks columns", "image"], good=2)
    assert row["source"] == "TinyCSV"


def test_csv_row_without_image_name(corpus, data_params):
    src = corpus.csv(n=3)
    csv_file = src.root / "boxes.csv"
    csv_file.write_text(csv_file.read_text() + ",lung nodule,1,1,5,5\n")
    row = corpus.run(data_params).expect_one_bad(csv_file, ["no image name"], good=3, total=4)
    assert row["input"] == f"{csv_file}:8"


def test_two_inputs_with_the_same_output_name(corpus, data_params):
    """``smear_001.png`` and ``smear_001.jpg`` would both become smear_001: the second is reported, not overwritten."""
    src = corpus.coco(n=3)
    ann_file = src.root / "annotations.json"
    data = json.loads(ann_file.read_text())
    twin = corpus.save_image(src.root / "images" / "smear_001.jpg", corpus.rgb_image(50))
    data["images"].append({"id": 9, "file_name": twin.name, "width": 64, "height": 48})
    data["annotations"].append({"id": 90, "image_id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]})
    ann_file.write_text(json.dumps(data))
    row = corpus.run(data_params).expect_one_bad(twin, ["duplicate item id 'smear_001'"], good=3, total=4)
    assert row["input"] == str(twin)


def test_label_volume_stored_in_another_orientation(corpus, data_params, tmp_path):
    """A mask saved LPS (flipped array + matching affine) is on the same grid: same boxes as the RAS mask."""
    src = corpus.nifti_ct(n=2)
    reference = corpus.run(data_params, out=tmp_path / "reference").boxes
    item = src.items["case_001"]
    _, label = corpus.ct_volume(1)
    affine = np.diag([-1.5, -1.5, 3.0, 1.0])
    affine[:3, 3] = (1.5 * 31, 1.5 * 31, 0.0)
    corpus.save_nifti(item["label"], label[::-1, ::-1, :], affine)
    result = corpus.run(data_params)
    assert result.summary["converted"] == 2 and result.summary["quarantined"] == 0
    cols = ["image", "class_name", "x0", "y0", "x1", "y1"]
    got = result.boxes[cols].sort_values(cols).reset_index(drop=True)
    want = reference[cols].sort_values(cols).reset_index(drop=True)
    assert got.equals(want)


def test_labels_mapped_to_null_are_ignored(corpus, data_params):
    src = corpus.nifti_ct(n=2)
    src.entry["label_map"] = {1: "liver", 2: "spleen", 3: None}
    _, label = corpus.ct_volume(0)
    label[2:6, 2:6, 1:3] = 3  # e.g. "other tissue"
    corpus.save_nifti(src.items["case_000"]["label"], label)
    result = corpus.run(data_params)
    assert result.summary["converted"] == 2 and result.summary["quarantined"] == 0
    assert set(result.boxes["class_name"]) == {"liver", "spleen"}


def test_non_ascii_utf8_file_names_convert(corpus, data_params):
    src = corpus.nifti_ct(n=2)
    ct, label = corpus.ct_volume(4)
    image = corpus.save_nifti(src.root / "images" / "patient_é_ü.nii.gz", ct)
    corpus.save_nifti(src.root / "labels" / "patient_é_ü.nii.gz", label)
    result = corpus.run(data_params)
    assert result.summary["converted"] == 3 and result.summary["quarantined"] == 0
    assert str(image) in set(result.manifest["input"])


def test_dicom_slice_without_position(corpus, data_params):
    import pydicom

    src = corpus.dicom_ct(n=2)
    series = src.items["series_000"]
    ds = pydicom.dcmread(series["slice_002.dcm"])
    del ds.ImagePositionPatient
    ds.save_as(series["slice_002.dcm"])
    corpus.run(data_params).expect_one_bad(series["image"], ["ImagePositionPatient"], good=1)


# ---------------------------------------------------------------- malformed annotation files must not stop the run


def _assert_run_survives(result, other: str, n_other: int, mentions: tuple[str, ...]) -> None:
    s = result.summary
    assert s["converted"] + s["quarantined"] == s["total"]
    assert s["sources"][other]["images"] == n_other  # the other source is unaffected
    rows = result.rows("input")
    assert len(rows) >= 1
    text = " ".join(rows["input"]) + " " + " ".join(rows["reason"])
    assert any(m in text for m in mentions), rows.to_string()


@pytest.mark.parametrize("category_id", [None, "abc"], ids=["null", "string"])
def test_coco_annotation_with_bad_category_id(corpus, data_params, category_id):
    """A COCO annotation whose category_id is null or not an integer is a bad input, not a reason to crash."""
    src = corpus.coco(n=3)
    corpus.yolo(n=2)
    ann_file = src.root / "annotations.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = category_id  # annotation 1, of smear_000
    ann_file.write_text(json.dumps(data))
    result = corpus.run(data_params)  # BUG: raises TypeError/ValueError from enumerate_coco
    _assert_run_survives(result, "TinyYOLO", 2, ("smear_000", "annotation1", "annotations.json"))
    assert result.summary["sources"]["TinyCOCO"]["images"] >= 2


def test_csv_not_utf8(corpus, data_params):
    """A CSV saved as Latin-1 (an accented image name) is a bad input, not a reason to crash."""
    src = corpus.csv(n=3)
    corpus.yolo(n=2)
    csv_file = src.root / "boxes.csv"
    csv_file.write_bytes(csv_file.read_bytes() + "caf\u00e9.png,lung nodule,1,1,5,5\n".encode("latin-1"))
    result = corpus.run(data_params)  # BUG: raises UnicodeDecodeError from enumerate_csv
    _assert_run_survives(result, "TinyYOLO", 2, ("boxes.csv", "caf"))


def test_imagesets_file_not_utf8(corpus, data_params):
    src = corpus.voc(n=3)
    corpus.yolo(n=2)
    src.entry["split"] = "imagesets"
    folder = src.root / "ImageSets" / "Main"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_bytes(b"img_000\nimg_001\n")
    (folder / "val.txt").write_bytes(b"img_002\ncaf\xe9\n")
    result = corpus.run(data_params)  # BUG: raises UnicodeDecodeError from _imagesets
    s = result.summary
    assert s["converted"] + s["quarantined"] == s["total"]
    assert s["sources"]["TinyYOLO"]["images"] == 2
    if s["sources"]["TinyVOC"]["images"] != 3:  # the odd line may be ignored, or the split files reported
        _assert_run_survives(result, "TinyYOLO", 2, ("val.txt", "ImageSets", "img_00"))


def test_box_notes_are_reported_again_when_reused(corpus, data_params):
    _with_bad_box(corpus, "voc", (20.0, 24.0, 90.0, 40.0))
    first = corpus.run(data_params)
    second = corpus.run(data_params)
    assert second.summary["reused"] == 3 and second.summary["boxes_repaired"] == 1
    assert second.quarantine.equals(first.quarantine)


def test_voc_annotation_not_listed_in_imagesets(corpus, data_params):
    src = corpus.voc(n=3)
    src.entry["split"] = "imagesets"
    folder = src.root / "ImageSets" / "Main"
    folder.mkdir(parents=True)
    (folder / "train.txt").write_text("img_000\n")
    (folder / "test.txt").write_text("img_002\n")
    result = corpus.run(data_params)
    result.expect_one_bad(src.items["img_001"]["xml"], ["not listed in any ImageSets"], good=2)
    assert dict(zip(result.manifest["item_id"], result.manifest["split"])) == {"img_000": "train", "img_002": "test"}
