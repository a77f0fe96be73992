"""``convert`` on the shared real data: BCCD (Pascal VOC, its own ImageSets splits) and the TotalSegmentator
CT examples (a NIfTI case and a DICOM series case). Skipped when the shared data folder is absent.

The conversion runs once (process pool, workers=2) and is shared by the tests of this module.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrov.catalog import load_vocabulary

_RUNS: dict[str, object] = {}


@pytest.fixture
def real(shared_data: Path, data_params, corpus_factory, tmp_path_factory):
    key = str(shared_data)
    if key not in _RUNS:
        corpus = corpus_factory(tmp_path_factory.mktemp("real"))
        corpus.add_entry({"name": "BCCD", "root": str(shared_data / "bccd" / "BCCD"), "split": "imagesets"})
        corpus.add_entry(
            {
                "name": "TotalSegmentorCT",
                "root": str(shared_data / "totalsegmentator"),
                "cases": [
                    {"image": "example_ct_sm.nii.gz", "label": "example_seg.nii.gz", "patient": "example_ct_sm"},
                    {"image": "example_ct_dicom", "label": "example_seg_dicom.nii.gz", "patient": "example_ct_dicom"},
                ],
            }
        )
        _RUNS[key] = corpus.run(data_params, workers=2)
    return _RUNS[key]


@pytest.fixture
def bccd_root(shared_data: Path) -> Path:
    return shared_data / "bccd" / "BCCD"


def test_every_input_is_converted(real):
    s = real.summary
    assert s["total"] == s["converted"] == 364 + 2
    assert s["quarantined"] == 0
    assert len(real.rows("input")) == 0
    assert s["sources"]["BCCD"]["inputs"] == 364 and s["sources"]["TotalSegmentorCT"]["inputs"] == 2
    assert all((real.out / p).is_file() for p in real.manifest["image"])
    assert all((real.out / p).is_file() for p in real.manifest["label"])


def test_bccd_images_and_boxes(real, bccd_root):
    m, b = real.manifest, real.boxes
    bccd = m[m["source"] == "BCCD"]
    assert len(bccd) == 364 == real.summary["sources"]["BCCD"]["images"]
    assert (bccd["modality"] == "microscopy").all()
    boxes = b[b["source"] == "BCCD"]
    assert len(boxes) == 4886 == real.summary["sources"]["BCCD"]["boxes"]
    # every <object> of the XMLs, less the two zero-size ones
    objects = sum(xml.read_text().count("<object>") for xml in (bccd_root / "Annotations").glob("*.xml"))
    assert len(boxes) == objects - 2
    assert set(boxes["class_name"]) == {"red blood cell", "white blood cell", "platelets"}
    for col in ("x_center", "y_center", "width", "height"):
        assert ((boxes[col] > 0) & (boxes[col] <= 1)).all(), col
    sample = bccd.iloc[0]
    with Image.open(real.out / sample["image"]) as img:
        assert img.size == (sample["width"], sample["height"]) == (640, 480)


def test_bccd_zero_size_boxes_are_dropped_and_reported(real):
    s = real.summary
    assert s["boxes_dropped"] == 2 and s["boxes_repaired"] == 0
    rows = real.rows("box")
    assert len(rows) == 2
    assert (rows["action"] == "dropped").all() and (rows["source"] == "BCCD").all()
    assert sorted(Path(p).name for p in rows["input"]) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert rows["reason"].str.contains("zero or negative size").all()


def test_bccd_splits_follow_imagesets(real, bccd_root):
    bccd = real.manifest[real.manifest["source"] == "BCCD"]
    assert bccd["split"].value_counts().to_dict() == {"train": 205, "val": 87, "test": 72}
    for split in ("train", "val", "test"):
        listed = set((bccd_root / "ImageSets" / "Main" / f"{split}.txt").read_text().split())
        assert set(bccd.loc[bccd["split"] == split, "item_id"]) == listed, split
    assert real.summary["splits"]["val"] == 87 and real.summary["splits"]["test"] == 72  # TotalSegmentor may add to any


def test_totalsegmentator_cases(real):
    m, b = real.manifest, real.boxes
    vocab = load_vocabulary()
    ts = m[m["source"] == "TotalSegmentorCT"]
    assert set(ts["item_id"]) == {"example_ct_sm", "example_ct_dicom"}
    assert (ts["modality"] == "ct").all()
    assert (ts.groupby("item_id")["split"].nunique() == 1).all()
    assert set(ts["patient_id"]) == {"TotalSegmentorCT/example_ct_sm", "TotalSegmentorCT/example_ct_dicom"}
    dicom = ts[ts["item_id"] == "example_ct_dicom"]
    assert len(dicom) > 0 and (dicom["width"] == 512).all() and (dicom["height"] == 512).all()
    for row in dicom.head(3).itertuples():
        with Image.open(real.out / row.image) as img:
            assert img.size == (512, 512) and img.mode == "L"
    assert len(ts[ts["item_id"] == "example_ct_sm"]) > 0
    assert ts["slice_index"].ge(0).all()
    boxes = b[b["source"] == "TotalSegmentorCT"]
    assert set(boxes["class_name"]) <= set(vocab.names)
    for case in ("example_ct_sm", "example_ct_dicom"):
        names = set(boxes.loc[boxes["image"].isin(ts.loc[ts["item_id"] == case, "image"]), "class_name"])
        assert "liver" in names, case
    assert (boxes["class_name"].map(lambda n: vocab[n].id) == boxes["class_id"]).all()
    for col in ("x_center", "y_center", "width", "height"):
        assert ((boxes[col] > 0) & (boxes[col] <= 1)).all(), col
    # every slice index is unique within a case and matches the image name
    for row in ts.itertuples():
        assert re.search(rf"_z{row.slice_index:04d}\.png$", row.image)
    assert not ts.duplicated(["item_id", "slice_index"]).any()


def test_totalsegmentator_slices_are_in_the_radiological_view(real):
    """Patient right (liver, right kidney) on the image left; spleen and left kidney on the right."""
    m, b = real.manifest, real.boxes
    ts = m[m["source"] == "TotalSegmentorCT"]
    for case in ("example_ct_sm", "example_ct_dicom"):
        boxes = b[b["image"].isin(ts.loc[ts["item_id"] == case, "image"])]
        mean_x = boxes.groupby("class_name")["x_center"].mean()
        assert mean_x["liver"] < 0.5 < mean_x["spleen"], case
        if {"right kidney", "left kidney"} <= set(mean_x.index):
            assert mean_x["right kidney"] < mean_x["left kidney"], case
    # label lines agree with the table for a few slices of each case
    for row in ts.groupby("item_id").head(2).itertuples():
        lines = [line.split() for line in (real.out / row.label).read_text().splitlines()]
        assert len(lines) == row.n_boxes and all(len(f) == 5 for f in lines)
        values = np.array([[float(v) for v in f[1:]] for f in lines])
        assert ((values > 0) & (values <= 1)).all()
