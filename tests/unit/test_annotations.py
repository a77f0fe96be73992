"""2D annotation formats through their adapters, on tiny hand-made files with known boxes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrov.catalog import load_vocabulary
from medrov.data.adapters import (
    ADAPTERS,
    enumerate_coco,
    enumerate_csv,
    enumerate_mask2d,
    enumerate_voc,
    enumerate_yolo,
    load_coco,
    load_csv,
    load_mask2d,
    load_voc,
    load_yolo,
)
from medrov.data.boxes import Box
from medrov.data.sources import ResolvedSource, SourceSpec, resolve_source
from medrov.errors import SourceReadError

BLOOD = {"RBC": "red blood cell", "Platelets": "platelets"}


def _source(tmp_path: Path, **spec) -> ResolvedSource:
    return resolve_source(SourceSpec(**spec), base=tmp_path, vocab=load_vocabulary(), where=tmp_path / "sources.yaml")


def _rgb(path: Path, width: int, height: int, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width * 1000 + height)
    array = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    array[0, 0] = value
    Image.fromarray(array).save(path)
    return path


def _gray16(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (np.arange(width * height, dtype=np.uint16) * 97).reshape(height, width)
    Image.fromarray(array).save(path)
    return path


def _coords(boxes: list[Box]) -> list[tuple]:
    return sorted((b.label, b.x0, b.y0, b.x1, b.y1) for b in boxes)


# ---------------------------------------------------------------- Pascal VOC


def _voc_xml(path: Path, filename: str, objects: list[tuple]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for name, a, b, c, d in objects
    )
    path.write_text(f"<annotation><filename>{filename}</filename>{objs}</annotation>")
    return path


def _voc_source(tmp_path: Path) -> ResolvedSource:
    return _source(
        tmp_path, name="TinyVOC", root=str(tmp_path / "voc"), modality="microscopy", format="voc", label_map=BLOOD
    )


def test_voc_boxes_are_converted_from_1_based_inclusive(tmp_path, data_params):
    root = tmp_path / "voc"
    image = _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    xml = _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 1, 2, 10, 8), ("Platelets", 11, 1, 20, 16)])
    src = _voc_source(tmp_path)
    items, skipped = enumerate_voc(src)
    assert skipped == []
    assert len(items) == 1
    item = items[0]
    assert item.item_id == "img1"
    assert item.inputs == [str(image), str(xml)]
    samples, notes = load_voc(src, item, data_params)
    assert notes == []
    assert len(samples) == 1
    sample = samples[0]
    assert sample.image.shape == (16, 20, 3)
    assert sample.image.dtype == np.uint8
    np.testing.assert_array_equal(sample.image, np.asarray(Image.open(image)))
    assert _coords(sample.boxes) == [("platelets", 10.0, 0.0, 20.0, 16.0), ("red blood cell", 0.0, 1.0, 10.0, 8.0)]


def test_voc_point_box_is_dropped_with_a_note(tmp_path, data_params):
    root = tmp_path / "voc"
    _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    xml = _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 1, 1, 10, 10), ("RBC", 5, 5, 5, 9)])
    src = _voc_source(tmp_path)
    (item,), _ = enumerate_voc(src)
    samples, notes = load_voc(src, item, data_params)
    assert _coords(samples[0].boxes) == [("red blood cell", 0.0, 0.0, 10.0, 10.0)]
    assert len(notes) == 1
    assert notes[0]["action"] == "dropped"
    assert notes[0]["input"] == str(xml)
    assert "size" in notes[0]["reason"]


def test_voc_box_outside_the_image_is_clipped_with_a_note(tmp_path, data_params):
    root = tmp_path / "voc"
    _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 15, 10, 30, 25)])
    src = _voc_source(tmp_path)
    (item,), _ = enumerate_voc(src)
    samples, notes = load_voc(src, item, data_params)
    assert _coords(samples[0].boxes) == [("red blood cell", 14.0, 9.0, 20.0, 16.0)]
    assert [n["action"] for n in notes] == ["clipped"]
    assert "clipped" in notes[0]["reason"]


def test_voc_only_degenerate_boxes_is_an_empty_annotation(tmp_path, data_params):
    root = tmp_path / "voc"
    _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 5, 5, 5, 9)])
    src = _voc_source(tmp_path)
    (item,), _ = enumerate_voc(src)
    with pytest.raises(SourceReadError, match="empty annotation"):
        load_voc(src, item, data_params)


def test_voc_unknown_class_raises_naming_the_file(tmp_path, data_params):
    root = tmp_path / "voc"
    _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    xml = _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 1, 1, 5, 5), ("Neutrophil", 2, 2, 6, 6)])
    src = _voc_source(tmp_path)
    (item,), _ = enumerate_voc(src)
    with pytest.raises(SourceReadError, match="Neutrophil") as err:
        load_voc(src, item, data_params)
    assert err.value.path == str(xml)
    assert str(xml) in str(err.value)


def test_voc_malformed_xml_raises(tmp_path, data_params):
    root = tmp_path / "voc"
    _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "img1.xml").write_text("<annotation><object>")
    src = _voc_source(tmp_path)
    (item,), _ = enumerate_voc(src)
    with pytest.raises(SourceReadError, match="malformed XML"):
        load_voc(src, item, data_params)


def test_voc_image_without_xml_is_skipped(tmp_path):
    root = tmp_path / "voc"
    _rgb(root / "JPEGImages" / "img1.png", 20, 16)
    lonely = _rgb(root / "JPEGImages" / "img2.png", 20, 16)
    _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 1, 1, 5, 5)])
    items, skipped = enumerate_voc(_voc_source(tmp_path))
    assert [i.item_id for i in items] == ["img1"]
    assert [s.input for s in skipped] == [str(lonely)]
    assert "no annotation" in skipped[0].reason


def test_voc_imagesets_give_the_split(tmp_path):
    root = tmp_path / "voc"
    for stem in ("a", "b", "c"):
        _rgb(root / "JPEGImages" / f"{stem}.png", 8, 8)
        _voc_xml(root / "Annotations" / f"{stem}.xml", f"{stem}.png", [("RBC", 1, 1, 5, 5)])
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("b\n")
    src = _source(
        tmp_path,
        name="TinyVOC",
        root=str(root),
        modality="microscopy",
        format="voc",
        label_map=BLOOD,
        split="imagesets",
    )
    items, skipped = enumerate_voc(src)
    assert {i.item_id: i.split for i in items} == {"a": "train", "b": "test"}
    assert [Path(s.input).name for s in skipped] == ["c.xml"]


# ---------------------------------------------------------------- COCO


def _coco_source(tmp_path: Path, annotations: list[dict], width=20, height=16, declared=None) -> ResolvedSource:
    root = tmp_path / "coco"
    _rgb(root / "images" / "a.png", width, height)
    dw, dh = declared or (width, height)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": dw, "height": dh}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "Platelets"}, {"id": 3, "name": "Ghost"}],
    }
    (root / "annotations.json").write_text(json.dumps(data))
    return _source(tmp_path, name="TinyCOCO", root=str(root), modality="microscopy", format="coco", label_map=BLOOD)


def test_coco_xywh_boxes(tmp_path, data_params):
    src = _coco_source(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [10.5, 0, 1.5, 2]},
        ],
    )
    items, skipped = enumerate_coco(src)
    assert skipped == []
    assert [i.item_id for i in items] == ["a"]
    samples, notes = load_coco(src, items[0], data_params)
    assert notes == []
    assert samples[0].image.shape == (16, 20, 3)
    assert _coords(samples[0].boxes) == [("platelets", 10.5, 0.0, 12.0, 2.0), ("red blood cell", 2.0, 3.0, 6.0, 8.0)]


def test_coco_annotation_for_unknown_image_is_skipped(tmp_path):
    src = _coco_source(
        tmp_path,
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]},
            {"id": 7, "image_id": 99, "category_id": 1, "bbox": [2, 3, 4, 5]},
        ],
    )
    items, skipped = enumerate_coco(src)
    assert len(items) == 1 and len(items[0].spec["annotations"]) == 1
    assert len(skipped) == 1 and "99" in skipped[0].reason


def test_coco_unknown_category_raises_naming_the_image(tmp_path, data_params):
    src = _coco_source(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 3, 4, 5]}])
    (item,), _ = enumerate_coco(src)
    with pytest.raises(SourceReadError, match="Ghost") as err:
        load_coco(src, item, data_params)
    assert "a.png" in str(err.value)


def test_coco_declared_size_mismatch_raises(tmp_path, data_params):
    src = _coco_source(
        tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 4, 5]}], declared=(640, 480)
    )
    (item,), _ = enumerate_coco(src)
    with pytest.raises(SourceReadError, match="640x480"):
        load_coco(src, item, data_params)


# ---------------------------------------------------------------- CSV


def _csv_source(tmp_path: Path, rows: list[tuple], **extra) -> ResolvedSource:
    root = tmp_path / "cxr"
    _gray16(root / "a.png", 24, 12)
    with open(root / "boxes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
        writer.writerows(rows)
    return _source(
        tmp_path,
        name="TinyCXR",
        root=str(root),
        modality="xray",
        format="csv",
        label_map={"nodule": "lung nodule"},
        **extra,
    )


def test_csv_xyxy(tmp_path, data_params):
    src = _csv_source(tmp_path, [("a.png", "nodule", 1, 2, 5, 7), ("a.png", "nodule", 10.5, 0, 24, 12)])
    items, skipped = enumerate_csv(src)
    assert skipped == []
    assert [i.item_id for i in items] == ["a"]
    samples, notes = load_csv(src, items[0], data_params)
    assert notes == []
    sample = samples[0]
    # 16-bit gray is scaled to 8 bit
    assert sample.image.dtype == np.uint8 and sample.image.shape == (12, 24)
    assert sample.image.min() == 0 and sample.image.max() == 255
    assert _coords(sample.boxes) == [("lung nodule", 1.0, 2.0, 5.0, 7.0), ("lung nodule", 10.5, 0.0, 24.0, 12.0)]


def test_csv_xywh(tmp_path, data_params):
    src = _csv_source(tmp_path, [("a.png", "nodule", 1, 2, 5, 7)], csv_box="xywh")
    (item,), _ = enumerate_csv(src)
    samples, _ = load_csv(src, item, data_params)
    assert _coords(samples[0].boxes) == [("lung nodule", 1.0, 2.0, 6.0, 9.0)]


def test_csv_unknown_label_raises_naming_the_file_and_line(tmp_path, data_params):
    src = _csv_source(tmp_path, [("a.png", "nodule", 1, 2, 5, 7), ("a.png", "mass", 1, 2, 5, 7)])
    (item,), _ = enumerate_csv(src)
    with pytest.raises(SourceReadError, match="mass") as err:
        load_csv(src, item, data_params)
    assert str(tmp_path / "cxr" / "boxes.csv") + ":3" in str(err.value)


def test_csv_missing_columns_raise(tmp_path):
    root = tmp_path / "cxr"
    root.mkdir()
    (root / "boxes.csv").write_text("image,label,x1,y1\na.png,nodule,1,2\n")
    src = _source(
        tmp_path, name="TinyCXR", root=str(root), modality="xray", format="csv", label_map={"nodule": "lung nodule"}
    )
    with pytest.raises(SourceReadError, match="x2"):
        enumerate_csv(src)


def test_csv_non_numeric_box_raises(tmp_path, data_params):
    src = _csv_source(tmp_path, [("a.png", "nodule", 1, "two", 5, 7)])
    (item,), _ = enumerate_csv(src)
    with pytest.raises(SourceReadError, match="non-numeric"):
        load_csv(src, item, data_params)


# ---------------------------------------------------------------- YOLO


def _yolo_source(tmp_path: Path, lines: str) -> ResolvedSource:
    root = tmp_path / "yolo"
    _rgb(root / "images" / "a.png", 16, 8)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text(lines)
    return _source(
        tmp_path,
        name="TinyYOLO",
        root=str(root),
        modality="endoscopy",
        format="yolo",
        classes=["polyp"],
        label_map={"polyp": "colon polyp"},
    )


def test_yolo_normalised_to_pixels(tmp_path, data_params):
    src = _yolo_source(tmp_path, "0 0.5 0.5 0.25 0.5\n\n0 0.125 0.25 0.25 0.5\n")
    items, skipped = enumerate_yolo(src)
    assert skipped == []
    assert [i.item_id for i in items] == ["images__a"]
    samples, notes = load_yolo(src, items[0], data_params)
    assert notes == []
    assert samples[0].image.shape == (8, 16, 3)
    assert _coords(samples[0].boxes) == [("colon polyp", 0.0, 0.0, 4.0, 4.0), ("colon polyp", 6.0, 2.0, 10.0, 6.0)]


def test_yolo_bad_class_id_and_bad_line_raise(tmp_path, data_params):
    src = _yolo_source(tmp_path, "1 0.5 0.5 0.25 0.5\n")
    (item,), _ = enumerate_yolo(src)
    with pytest.raises(SourceReadError, match="class id 1"):
        load_yolo(src, item, data_params)
    Path(item.inputs[1]).write_text("0 0.5 0.5\n")
    with pytest.raises(SourceReadError, match="line 1"):
        load_yolo(src, item, data_params)


def test_yolo_image_without_label_is_skipped(tmp_path):
    src = _yolo_source(tmp_path, "0 0.5 0.5 0.25 0.5\n")
    lonely = _rgb(tmp_path / "yolo" / "images" / "b.png", 16, 8)
    items, skipped = enumerate_yolo(src)
    assert len(items) == 1
    assert [s.input for s in skipped] == [str(lonely)]


# ---------------------------------------------------------------- per-class binary masks


def test_mask2d_one_box_per_component(tmp_path, data_params):
    root = tmp_path / "polyp"
    _rgb(root / "images" / "f1.png", 12, 10)
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[1:4, 2:5] = 255  # rows 1..3, cols 2..4
    mask[6:9, 7:12] = 255  # rows 6..8, cols 7..11
    (root / "masks").mkdir(parents=True)
    Image.fromarray(mask).save(root / "masks" / "f1_polyp.png")
    src = _source(
        tmp_path,
        name="TinyPolyp",
        root=str(root),
        modality="endoscopy",
        format="mask2d",
        images="images/*.png",
        labels="masks/{stem}_{class}.png",
        label_map={"polyp": "colon polyp"},
    )
    items, skipped = enumerate_mask2d(src)
    assert skipped == []
    assert len(items) == 1
    assert items[0].spec["masks"] == {"polyp": str(root / "masks" / "f1_polyp.png")}
    samples, notes = load_mask2d(src, items[0], data_params)
    assert notes == []
    assert _coords(samples[0].boxes) == [("colon polyp", 2, 1, 5, 4), ("colon polyp", 7, 6, 12, 9)]


def test_mask2d_slice_mode_gives_one_box(tmp_path, data_params):
    root = tmp_path / "polyp"
    _rgb(root / "images" / "f1.png", 12, 10)
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[1:4, 2:5] = 255
    mask[6:9, 7:12] = 255
    (root / "masks").mkdir(parents=True)
    Image.fromarray(mask).save(root / "masks" / "f1_polyp.png")
    src = _source(
        tmp_path,
        name="TinyPolyp",
        root=str(root),
        modality="endoscopy",
        format="mask2d",
        images="images/*.png",
        labels="masks/{stem}_{class}.png",
        label_map={"polyp": "colon polyp"},
        boxes="slice",
    )
    (item,), _ = enumerate_mask2d(src)
    samples, _ = load_mask2d(src, item, data_params)
    assert _coords(samples[0].boxes) == [("colon polyp", 2, 1, 12, 9)]


def test_mask2d_rgba_mask_alpha_is_not_foreground(tmp_path, data_params):
    """An RGBA mask (black, fully opaque background) must give the object's box, not the whole image.

    Images drop alpha (to_uint8_image); masks must too: the opaque alpha channel is 255 everywhere.
    """
    root = tmp_path / "polyp"
    _rgb(root / "images" / "f1.png", 12, 10)
    rgba = np.zeros((10, 12, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque everywhere
    rgba[2:4, 3:6, :3] = 255  # the polyp: rows 2..3, cols 3..5, white
    (root / "masks").mkdir(parents=True)
    Image.fromarray(rgba, "RGBA").save(root / "masks" / "f1_polyp.png")
    src = _source(
        tmp_path,
        name="TinyPolyp",
        root=str(root),
        modality="endoscopy",
        format="mask2d",
        images="images/*.png",
        labels="masks/{stem}_{class}.png",
        label_map={"polyp": "colon polyp"},
    )
    (item,), _ = enumerate_mask2d(src)
    samples, _ = load_mask2d(src, item, data_params)
    assert _coords(samples[0].boxes) == [("colon polyp", 3, 2, 6, 4)]


def test_mask2d_image_without_mask_is_skipped_and_shape_mismatch_raises(tmp_path, data_params):
    root = tmp_path / "polyp"
    _rgb(root / "images" / "f1.png", 12, 10)
    lonely = _rgb(root / "images" / "f2.png", 12, 10)
    (root / "masks").mkdir(parents=True)
    Image.fromarray(np.full((5, 5), 255, dtype=np.uint8)).save(root / "masks" / "f1_polyp.png")
    src = _source(
        tmp_path,
        name="TinyPolyp",
        root=str(root),
        modality="endoscopy",
        format="mask2d",
        images="images/*.png",
        labels="masks/{stem}_{class}.png",
        label_map={"polyp": "colon polyp"},
    )
    items, skipped = enumerate_mask2d(src)
    assert [s.input for s in skipped] == [str(lonely)]
    with pytest.raises(SourceReadError, match="shape mismatch"):
        load_mask2d(src, items[0], data_params)


def test_mask2d_jpeg_mask_is_binarised_and_speckles_removed_before_boxes(tmp_path, data_params):
    """In slice mode one speck would stretch the box over the image: it is removed, the clean box comes out."""
    import io

    root = tmp_path / "polyp"
    _rgb(root / "images" / "f1.png", 40, 30)
    clean = np.zeros((30, 40), dtype=np.uint8)
    clean[8:20, 10:25] = 255
    buffer = io.BytesIO()
    Image.fromarray(clean).save(buffer, format="JPEG", quality=60)
    jpeg = np.asarray(Image.open(buffer)).copy()
    jpeg[28, 38] = jpeg[1, 1] = 250  # isolated specks
    (root / "masks").mkdir(parents=True)
    Image.fromarray(jpeg).save(root / "masks" / "f1_polyp.png")
    src = _source(
        tmp_path,
        name="TinyPolyp",
        root=str(root),
        modality="endoscopy",
        format="mask2d",
        images="images/*.png",
        labels="masks/{stem}_{class}.png",
        label_map={"polyp": "colon polyp"},
        boxes="slice",
    )
    (item,), _ = enumerate_mask2d(src)
    samples, _ = load_mask2d(src, item, data_params.model_copy(update={"min_box_pixels": 3}))
    assert _coords(samples[0].boxes) == [("colon polyp", 10, 8, 25, 20)]
    assert samples[0].stats == {"masks_merged": 0, "masks_binarised": 1, "speckles_removed": 2}


def test_mask2d_discovers_class_folders_and_keeps_each_mask_with_its_own_image(tmp_path):
    """``{class}`` as a folder is discovered too; "a_b_liver" is image a_b's, and a mask is never taken as an image."""
    root = tmp_path / "coll"
    for stem in ("a", "a_b"):
        _rgb(root / "by_class" / "img" / f"{stem}.png", 8, 6)
        _rgb(root / "by_class" / "liver" / f"{stem}.png", 8, 6)
        _rgb(root / "flat" / f"{stem}.png", 8, 6)
        _rgb(root / "flat" / f"{stem}_liver.png", 8, 6)
    _rgb(root / "by_class" / "left_kidney" / "a.png", 8, 6)
    common = {"name": "Coll", "modality": "ct", "format": "mask2d"}
    by_class = _source(tmp_path, root=str(root / "by_class"), images="img/*.png", labels="{class}/{stem}.png", **common)
    items, skipped = enumerate_mask2d(by_class)
    assert skipped == []
    assert {i.item_id: sorted(i.spec["targets"].items()) for i in items} == {
        "img__a": [("left_kidney", "left kidney"), ("liver", "liver")],
        "img__a_b": [("liver", "liver")],
    }
    flat = _source(tmp_path, root=str(root / "flat"), images="*.png", labels="{stem}_{class}.png", **common)
    items, skipped = enumerate_mask2d(flat)
    assert skipped == []
    assert {i.item_id: i.spec["masks"] for i in items} == {
        "a": {"liver": str(root / "flat" / "a_liver.png")},
        "a_b": {"liver": str(root / "flat" / "a_b_liver.png")},
    }
    # two images whose template gives one mask name: the second is told which image took it
    _rgb(root / "deep" / "img" / "p1" / "x.png", 8, 6)
    _rgb(root / "deep" / "img" / "p2" / "x.png", 8, 6)
    _rgb(root / "deep" / "masks" / "x_liver.png", 8, 6)
    deep = _source(tmp_path, root=str(root / "deep"), images="img/*/*.png", labels="masks/{stem}_{class}.png", **common)
    items, skipped = enumerate_mask2d(deep)
    assert [i.item_id for i in items] == ["img__p1__x"]
    assert [s.input for s in skipped] == [str(root / "deep" / "img" / "p2" / "x.png")]
    assert "x_liver.png, which is taken as the mask of img/p1/x.png" in skipped[0].reason


def test_mask2d_needs_a_class_placeholder(tmp_path):
    src = _source(
        tmp_path,
        name="TinyPolyp",
        root=str(tmp_path),
        modality="endoscopy",
        format="mask2d",
        images="images/*.png",
        labels="masks/{stem}.png",
        label_map={"polyp": "colon polyp"},
    )
    with pytest.raises(SourceReadError, match="class"):
        enumerate_mask2d(src)


# ---------------------------------------------------------------- shared behaviour


def test_unreadable_image_raises_naming_it(tmp_path, data_params):
    root = tmp_path / "voc"
    bad = root / "JPEGImages" / "img1.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image")
    _voc_xml(root / "Annotations" / "img1.xml", "img1.png", [("RBC", 1, 1, 5, 5)])
    src = _voc_source(tmp_path)
    (item,), _ = enumerate_voc(src)
    with pytest.raises(SourceReadError, match="cannot read image") as err:
        load_voc(src, item, data_params)
    assert str(bad) in str(err.value)


def test_every_format_has_an_adapter():
    assert set(ADAPTERS) == {"volume", "mask2d", "voc", "coco", "csv", "yolo"}


def test_real_bccd_zero_size_box_is_dropped(shared_data, data_params):
    import xml.etree.ElementTree as ET
    from collections import Counter

    root = shared_data / "bccd" / "BCCD"
    if not (root / "Annotations" / "BloodImage_00338.xml").is_file():
        pytest.skip("BCCD is not in the shared data folder")
    src = _source(shared_data, name="BCCD", root=str(root), split="imagesets")
    items, skipped = enumerate_voc(src)
    assert skipped == []
    assert Counter(i.split for i in items) == {"train": 205, "val": 87, "test": 72}
    (item,) = [i for i in items if i.item_id == "BloodImage_00338"]
    n_objects = len(ET.parse(item.inputs[1]).getroot().findall("object"))
    samples, notes = load_voc(src, item, data_params)
    assert samples[0].image.shape == (480, 640, 3)
    assert len(samples[0].boxes) == n_objects - 1
    assert [n["action"] for n in notes] == ["dropped"]
    assert "red blood cell" in notes[0]["reason"]
    for box in samples[0].boxes:
        assert 0 <= box.x0 < box.x1 <= 640 and 0 <= box.y0 < box.y1 <= 480
