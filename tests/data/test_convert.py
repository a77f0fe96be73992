"""``convert.run`` on small valid sources of every format: the output files, their agreement, and reruns.

Covers the output contract (manifest/boxes columns and values, YOLO label files, splits, presence matrix,
omnis.yaml and split lists), volume geometry (a NIfTI volume and the same anatomy as a DICOM series give the
same pixels and boxes, in the radiological view) and the incremental behaviour (reuse, targeted
reconversion, cleanup after an interrupted run, removal of deleted inputs, pool == serial).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medrov.catalog import load_vocabulary
from medrov.data.splits import SPLITS, split_of

MANIFEST_COLUMNS = {"image", "source", "modality", "split", "width", "height", "volume_id", "slice_index", "n_boxes"}
BOX_COLUMNS = {"image", "source", "class_id", "class_name", "x_center", "y_center", "width", "height"}
FORMATS = ("nifti_ct", "dicom_ct", "voc", "coco", "csv", "mask2d", "yolo")
# images per source in the corpus: volumes keep the 4 slices with organs (1..4), 2D sources one per input
EXPECTED_IMAGES = {
    "TinyCT": 12,
    "TinyDicomCT": 8,
    "TinyVOC": 3,
    "TinyCOCO": 3,
    "TinyCSV": 3,
    "TinyPolyp": 3,
    "TinyYOLO": 3,
}
ANNOTATED = {
    "TinyCT": {"liver", "spleen"},
    "TinyDicomCT": {"liver", "spleen"},
    "TinyVOC": {"red blood cell", "white blood cell"},
    "TinyCOCO": {"red blood cell", "white blood cell"},
    "TinyCSV": {"lung nodule", "lung mass"},
    "TinyPolyp": {"colon polyp"},
    "TinyYOLO": {"red blood cell", "white blood cell"},
}


def _build_all(corpus) -> int:
    for fmt in FORMATS:
        getattr(corpus, fmt)()
    return sum(b.n for b in corpus.built.values())


@pytest.fixture
def full(corpus, data_params):
    n_inputs = _build_all(corpus)
    result = corpus.run(data_params)
    result.n_inputs = n_inputs
    return result


def _mtimes(out: Path) -> dict[str, int]:
    return {
        p.relative_to(out).as_posix(): p.stat().st_mtime_ns
        for folder in ("images", "labels")
        for p in (out / folder).rglob("*")
        if p.is_file()
    }


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in ("image", "class_id", "x0", "y0", "x1", "y1") if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True)


# ---------------------------------------------------------------- the outputs


def test_summary_accounts_for_every_input(full):
    s = full.summary
    assert s["converted"] == s["total"] == full.n_inputs == 20
    assert s["quarantined"] == 0 and s["reconverted"] == 20 and s["reused"] == 0
    assert {name: v["images"] for name, v in s["sources"].items()} == EXPECTED_IMAGES
    assert s["images"] == sum(EXPECTED_IMAGES.values()) == len(full.manifest)
    assert s["boxes"] == len(full.boxes)
    assert sum(s["splits"].values()) == s["images"]
    assert json.loads((full.out / "convert_summary.json").read_text())["total"] == 20
    assert len(full.quarantine) == 0
    assert list(full.quarantine.columns) == ["input", "source", "level", "action", "reason"]


def test_manifest(full):
    m = full.manifest
    assert MANIFEST_COLUMNS <= set(m.columns)
    assert m["image"].is_unique
    modality = {
        "TinyCT": "ct",
        "TinyDicomCT": "ct",
        "TinyVOC": "microscopy",
        "TinyCOCO": "microscopy",
        "TinyCSV": "xray",
        "TinyPolyp": "endoscopy",
        "TinyYOLO": "microscopy",
    }
    assert dict(zip(m["source"], m["modality"])) == modality
    assert set(m["split"]) <= set(SPLITS)
    for row in m.itertuples():
        with Image.open(full.out / row.image) as img:
            assert img.size == (row.width, row.height)
            assert img.mode in ("L", "RGB")
        assert (full.out / row.label).is_file()
        assert row.volume_id == f"{row.source}/{row.item_id}"
        assert row.image.startswith(f"images/{row.source}/") and row.image.endswith(".png")
    volumes = m[m["source"].isin(["TinyCT", "TinyDicomCT"])]
    assert (volumes[["width", "height"]] == 32).all().all()
    assert set(volumes["slice_index"]) == {1, 2, 3, 4}  # slices 0 and 5 have no organ
    assert np.allclose(volumes[["spacing_x", "spacing_y", "spacing_z"]].to_numpy(), [1.5, 1.5, 3.0])
    flat = m[~m["source"].isin(["TinyCT", "TinyDicomCT"])]
    assert (flat["slice_index"] == -1).all()
    assert flat["volume_id"].is_unique
    counts = full.boxes.groupby("image").size()
    assert (m.set_index("image")["n_boxes"] == counts.reindex(m["image"]).fillna(0).astype(int)).all()
    assert (m["n_boxes"] > 0).all()


def test_boxes_are_normalised_and_named_from_the_vocabulary(full):
    b = full.boxes
    vocab = load_vocabulary()
    assert BOX_COLUMNS <= set(b.columns)
    for col in ("x_center", "y_center", "width", "height"):
        assert ((b[col] > 0) & (b[col] <= 1)).all(), col
    assert ((b["x_center"] - b["width"] / 2 >= -1e-9) & (b["x_center"] + b["width"] / 2 <= 1 + 1e-9)).all()
    assert ((b["y_center"] - b["height"] / 2 >= -1e-9) & (b["y_center"] + b["height"] / 2 <= 1 + 1e-9)).all()
    for row in b.itertuples():
        assert vocab.classes[row.class_id].name == row.class_name
    for source, names in ANNOTATED.items():
        assert set(b.loc[b["source"] == source, "class_name"]) == names, source
    assert set(b["image"]) <= set(full.manifest["image"])
    assert (b["novel"] == b["class_id"].isin({c.id for c in vocab.novel})).all()
    assert (b["split"] == b["image"].map(dict(zip(full.manifest["image"], full.manifest["split"])))).all()


def test_known_boxes_of_2d_formats(full):
    """Each 2D format's native coordinates land on the same pixel-edge boxes."""
    b = full.boxes.set_index("image")
    edges = lambda image: sorted(tuple(r) for r in b.loc[[image], ["x0", "y0", "x1", "y1"]].to_numpy().tolist())  # noqa: E731
    # VOC 1-based inclusive (11, 9, 24, 20) and COCO [x, y, w, h] (10, 8, 14, 12) both mean edges 10..24 x 8..20
    assert edges("images/TinyVOC/img_000.png") == [(10, 8, 24, 20), (30, 24, 50, 40)]
    assert edges("images/TinyCOCO/smear_000.png") == [(10, 8, 24, 20), (30, 24, 50, 40)]
    assert edges("images/TinyCSV/cxr_000.png") == [(12, 10, 18, 16), (34, 30, 52, 46)]
    assert edges("images/TinyYOLO/images__cells_000.png") == [(4, 4, 12, 12), (12, 16, 28, 28)]
    # mask2d: a 10x8 block at rows 5..14, cols 6..13 and a 10x16 block at rows 25..34, cols 20..35
    assert edges("images/TinyPolyp/images__frame_000.png") == [(6, 5, 14, 15), (20, 25, 36, 35)]


def test_label_files_match_boxes(full):
    m, b = full.manifest, full.boxes
    for row in m.itertuples():
        lines = (full.out / row.label).read_text().splitlines()
        assert len(lines) == row.n_boxes
        fields = [line.split() for line in lines]
        assert all(len(f) == 5 for f in fields), lines
        got = sorted((int(f[0]), *(round(float(v), 6) for v in f[1:])) for f in fields)
        mine = b[b["image"] == row.image]
        want = sorted(
            (int(r.class_id), round(r.x_center, 6), round(r.y_center, 6), round(r.width, 6), round(r.height, 6))
            for r in mine.itertuples()
        )
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g[0] == w[0]
            assert np.allclose(g[1:], w[1:], atol=1.5e-6), (row.label, g, w)


def test_splits_are_per_volume_and_listed(full, data_params):
    m = full.manifest
    assert (m.groupby("volume_id")["split"].nunique() == 1).all()
    # the split is the hash of the patient group: DICOM cases name their patient, others use the item id
    for row in m.drop_duplicates("volume_id").itertuples():
        group = row.patient_id.split("/", 1)[1]
        assert row.split == split_of(row.source, group, data_params.split)
    assert set(m.loc[m["source"] == "TinyDicomCT", "patient_id"]) == {"TinyDicomCT/patient0", "TinyDicomCT/patient1"}
    for split in SPLITS:
        listed = (full.out / f"{split}.txt").read_text().splitlines()
        assert all(line.startswith("./") for line in listed)
        assert sorted(line[2:] for line in listed) == sorted(m.loc[m["split"] == split, "image"])


def test_presence_csv(full):
    presence = pd.read_csv(full.out / "presence.csv", index_col="source")
    vocab = load_vocabulary()
    assert list(presence.index) == list(EXPECTED_IMAGES)
    assert list(presence.columns) == vocab.names
    assert set(np.unique(presence.to_numpy())) <= {-1, 0, 1}
    for source, names in ANNOTATED.items():
        assert set(presence.columns[presence.loc[source] == 1]) == names, source
    # classes of the modality that a source does not annotate may be present (0); other modalities cannot (-1)
    assert presence.loc["TinyCT", "right kidney"] == 0
    assert presence.loc["TinyCT", "red blood cell"] == -1


def test_omnis_yaml_and_split_lists(full):
    data = yaml.safe_load((full.out / "omnis.yaml").read_text())
    vocab = load_vocabulary()
    assert data["nc"] == len(vocab) == len(data["names"])
    assert data["names"][vocab["liver"].id].split("/")[0] == "liver"
    assert sorted(data["base"] + data["novel"]) == list(range(len(vocab)))
    assert data["sources"] == {
        "TinyCT": "ct",
        "TinyDicomCT": "ct",
        "TinyVOC": "microscopy",
        "TinyCOCO": "microscopy",
        "TinyCSV": "xray",
        "TinyPolyp": "endoscopy",
        "TinyYOLO": "microscopy",
    }
    listed = []
    for split in SPLITS:
        txt = full.out / data[split]
        assert txt.is_file()
        for line in txt.read_text().splitlines():
            assert line.startswith("./")
            assert (full.out / line).is_file()
            label = full.out / line.replace("./images/", "./labels/", 1).rsplit(".", 1)[0]
            assert Path(f"{label}.txt").is_file()  # where ultralytics looks for the label of an image
            listed.append(line[2:])
    assert sorted(listed) == sorted(full.manifest["image"])


def test_nifti_and_dicom_of_the_same_anatomy_give_the_same_slices(corpus, data_params):
    """Geometry: a RAS NIfTI and an LPS DICOM series of one body give identical pixels and boxes.

    Slices show the radiological view: the liver (patient right) on the image left, anterior at the top.
    """
    ct, label = corpus.ct_volume(5)
    nifti = corpus.nifti_ct(n=1)
    corpus.save_nifti(nifti.items["case_000"]["image"], ct)
    corpus.save_nifti(nifti.items["case_000"]["label"], label)
    dicom = corpus.dicom_ct(n=1)
    series = dicom.items["series_000"]
    for f in list(series.values())[2:]:
        f.unlink()
    # the same anatomy in LPS array order (x and y flipped), placed by the series' own affine
    spacing, origin = (1.5, 1.5, 3.0), np.array([-24.0, -24.0, 10.0])
    corpus.write_dicom_series(series["image"], ct[::-1, ::-1, :], tuple(origin), spacing)
    corpus.save_nifti(series["label"], label[::-1, ::-1, :], corpus.lps_affine_of_series(origin, spacing))
    result = corpus.run(data_params)
    assert result.summary["converted"] == 2 and result.summary["quarantined"] == 0
    m, b = result.manifest, result.boxes
    for k in (1, 2, 3, 4):
        a = np.asarray(Image.open(result.out / f"images/TinyCT/images__case_000_z{k:04d}.png"))
        d = np.asarray(Image.open(result.out / f"images/TinyDicomCT/series_000_z{k:04d}.png"))
        assert a.shape == d.shape == (32, 32)
        assert np.array_equal(a, d), k
    cols = ["class_name", "x0", "y0", "x1", "y1"]
    per = {
        src: _sorted(b[b["source"] == src].assign(image=b["image"].str.extract(r"_z(\d+)", expand=False)))[
            ["image", *cols]
        ]
        for src in ("TinyCT", "TinyDicomCT")
    }
    pd.testing.assert_frame_equal(per["TinyCT"], per["TinyDicomCT"])
    # the liver occupies RAS x in [xmin, xmax], y in [ymin, ymax]: LPS flips both axes of the 32x32 slice
    xs, ys, zs = np.nonzero(label == 1)
    liver = per["TinyCT"][per["TinyCT"]["class_name"] == "liver"]
    assert sorted(set(liver["image"].astype(int))) == sorted(set(zs.tolist()))
    assert (
        liver[["x0", "y0", "x1", "y1"]].to_numpy()
        == [32 - 1 - xs.max(), 32 - 1 - ys.max(), 32 - xs.min(), 32 - ys.min()]
    ).all()
    liver_xc = b.loc[b["class_name"] == "liver", "x_center"]
    spleen_xc = b.loc[b["class_name"] == "spleen", "x_center"]
    assert (liver_xc < 0.5).all() and (spleen_xc > 0.5).all()  # patient right on the image left
    # intensities: the HU window maps the liver (95 HU) brighter than air and the spleen darker than the liver
    a = np.asarray(Image.open(result.out / "images/TinyCT/images__case_000_z0002.png")).T[::-1, ::-1]
    assert a[label[:, :, 2] == 1].mean() > a[label[:, :, 2] == 2].mean() > a[0:2, 0:2].mean()
    assert m.loc[m["source"] == "TinyDicomCT", "spacing_z"].eq(3.0).all()


def test_skip_empty_slices_off_keeps_every_slice(corpus, data_params):
    corpus.nifti_ct(n=2)
    result = corpus.run(data_params.model_copy(update={"skip_empty_slices": False}))
    m = result.manifest
    assert len(m) == 12 and set(m["slice_index"]) == set(range(6))
    assert (m.loc[m["slice_index"].isin([0, 5]), "n_boxes"] == 0).all()
    for row in m[m["n_boxes"] == 0].itertuples():
        assert (result.out / row.label).read_text() == ""


# ---------------------------------------------------------------- reruns: idempotent and incremental


def test_second_run_reuses_everything(corpus, data_params):
    n = _build_all(corpus)
    first = corpus.run(data_params)
    before = _mtimes(first.out)
    manifest, boxes = first.manifest, first.boxes
    second = corpus.run(data_params)
    s = second.summary
    assert s["reused"] == s["converted"] == n and s["reconverted"] == 0 and s["orphans_removed"] == 0
    assert _mtimes(second.out) == before
    pd.testing.assert_frame_equal(second.manifest, manifest)
    pd.testing.assert_frame_equal(second.boxes, boxes)


def test_run_with_other_workers_or_split_settings_reuses(corpus, data_params):
    """Split fractions and the worker count do not change pixels: nothing is reconverted, splits may move."""
    corpus.nifti_ct(n=3)
    corpus.voc(n=3)
    corpus.run(data_params)
    changed = data_params.model_copy(update={"split": data_params.split.model_copy(update={"seed": 12345})})
    s = corpus.run(changed, workers=2).summary
    assert s["reused"] == 6 and s["reconverted"] == 0


def test_content_setting_change_reconverts(corpus, data_params):
    corpus.nifti_ct(n=2)
    first = corpus.run(data_params)
    pixels = np.asarray(Image.open(first.out / first.manifest["image"].iloc[0]))
    s = corpus.run(data_params.model_copy(update={"ct_window": (-200.0, 200.0)})).summary
    assert s["reconverted"] == 2 and s["reused"] == 0
    assert not np.array_equal(np.asarray(Image.open(first.out / first.manifest["image"].iloc[0])), pixels)


def _modify_nifti(corpus, built) -> str:
    item = built.items["case_001"]
    ct, _ = corpus.ct_volume(1)
    corpus.save_nifti(item["image"], ct + 7)
    return str(item["image"])


def _modify_dicom_slice(corpus, built) -> str:
    series = built.items["series_001"]
    import pydicom

    ds = pydicom.dcmread(series["slice_003.dcm"])
    ds.PixelData = (ds.pixel_array.astype(np.uint16) + 50).tobytes()
    ds.save_as(series["slice_003.dcm"])
    return str(series["image"])


def _modify_coco_annotation(corpus, built) -> str:
    ann_file = built.root / "annotations.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][2]["bbox"] = [11, 9, 13, 11]  # first box of image 2 (smear_001)
    ann_file.write_text(json.dumps(data))
    return str(built.items["smear_001"]["image"])


def _modify_csv_row(corpus, built) -> str:
    csv_file = built.root / "boxes.csv"
    csv_file.write_text(
        csv_file.read_text().replace("cxr_002.png,lung nodule,12,10,18,16", "cxr_002.png,lung nodule,13,10,18,16")
    )
    return str(built.items["cxr_002"]["image"])


def _modify_voc_xml(corpus, built) -> str:
    xml = built.items["img_000"]["xml"]
    xml.write_text(xml.read_text().replace("<xmin>11</xmin>", "<xmin>12</xmin>"))
    return str(built.items["img_000"]["image"])


def _modify_mask(corpus, built) -> str:
    item = built.items["frame_002"]
    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[2:9, 2:9] = 255
    corpus.save_image(item["mask"], mask)
    return str(item["image"])


@pytest.mark.parametrize(
    "fmt, modify",
    [
        ("nifti_ct", _modify_nifti),
        ("dicom_ct", _modify_dicom_slice),
        ("coco", _modify_coco_annotation),
        ("csv", _modify_csv_row),
        ("voc", _modify_voc_xml),
        ("mask2d", _modify_mask),
    ],
)
def test_modified_input_reconverts_only_that_input(corpus, data_params, fmt, modify):
    built = getattr(corpus, fmt)()
    other = corpus.yolo(n=2) if fmt != "yolo" else corpus.voc(n=2)
    first = corpus.run(data_params)
    before = _mtimes(first.out)
    changed_input = modify(corpus, built)
    second = corpus.run(data_params)
    s = second.summary
    assert s["reconverted"] == 1 and s["reused"] == built.n + other.n - 1 and s["quarantined"] == 0
    m = second.manifest
    changed_images = set(m.loc[m["input"] == changed_input, "image"])
    assert changed_images
    after = _mtimes(second.out)
    for rel, mtime in before.items():
        stem = rel.split("/", 1)[1].rsplit(".", 1)[0]
        if f"images/{stem}.png" not in changed_images:
            assert after[rel] == mtime, rel
    # the changed item's files were rewritten and agree with its new boxes
    first_boxes = first.boxes[first.boxes["image"].isin(changed_images)].reset_index(drop=True)
    second_boxes = second.boxes[second.boxes["image"].isin(changed_images)].reset_index(drop=True)
    if fmt not in ("nifti_ct", "dicom_ct"):
        assert not first_boxes[["x0", "y0", "x1", "y1"]].equals(second_boxes[["x0", "y0", "x1", "y1"]])


def test_interrupted_run_leftovers_are_cleaned(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    corpus.voc(n=2)
    first = corpus.run(data_params)
    out = first.out
    # what a killed run leaves: half-written files under their temporary name, and an item without its state
    partials = [
        out / "images" / "TinyCT" / "images__case_001_z0002.png.partial",
        out / "labels" / "TinyVOC" / "img_000.txt.partial",
        out / "manifest.parquet.partial",
        out / ".state" / "TinyCT" / "images__case_000.json.partial",
    ]
    for p in partials:
        p.write_bytes(b"\x89PNG half")
    state = out / ".state" / "TinyCT" / "images__case_002.json"
    assert state.is_file()
    state.unlink()
    before = _mtimes(out)
    second = corpus.run(data_params)
    s = second.summary
    assert not any(p.exists() for p in partials)
    assert not list(out.rglob("*.partial"))
    assert s["reconverted"] == 1 and s["reused"] == 4 and s["converted"] == 5
    assert state.is_file()
    changed = {k for k, v in _mtimes(out).items() if before.get(k) != v}
    assert changed and all("case_002" in k for k in changed)
    pd.testing.assert_frame_equal(second.manifest, first.manifest)
    assert src.n == 3


def test_deleted_output_image_is_rewritten(corpus, data_params):
    corpus.nifti_ct(n=2)
    first = corpus.run(data_params)
    victim = first.out / first.manifest["image"].iloc[3]
    victim.unlink()
    s = corpus.run(data_params).summary
    assert victim.is_file() and s["reconverted"] == 1 and s["reused"] == 1


def test_removed_input_removes_its_outputs(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    voc = corpus.voc(n=3)
    first = corpus.run(data_params)
    m = first.manifest
    gone = m[m["input"].isin([str(src.items["case_002"]["image"]), str(voc.items["img_001"]["image"])])]
    assert len(gone) == 5
    for f in (*src.items["case_002"].values(), *voc.items["img_001"].values()):
        f.unlink()
    second = corpus.run(data_params)
    s = second.summary
    assert s["total"] == s["converted"] == 4 and s["reused"] == 4 and s["quarantined"] == 0
    assert s["orphans_removed"] == 2 * len(gone)
    for row in gone.itertuples():
        assert not (second.out / row.image).exists() and not (second.out / row.label).exists()
    assert not set(gone["image"]) & set(second.manifest["image"])
    assert not set(gone["image"]) & set(second.boxes["image"])
    assert not (second.out / ".state" / "TinyCT" / "images__case_002.json").exists()
    listed = "".join((second.out / f"{split}.txt").read_text() for split in SPLITS)
    assert "case_002" not in listed and "img_001" not in listed


def test_input_that_turns_bad_loses_its_old_outputs(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    first = corpus.run(data_params)
    old = first.manifest.loc[first.manifest["input"] == str(src.items["case_001"]["image"]), "image"]
    assert len(old) == 4
    src.items["case_001"]["image"].write_bytes(b"not a nifti")
    second = corpus.run(data_params)
    second.expect_one_bad(src.items["case_001"]["image"], ["cannot read NIfTI"], good=2)
    assert not any((second.out / p).exists() for p in old)
    # and comes back once repaired
    ct, _ = corpus.ct_volume(1)
    corpus.save_nifti(src.items["case_001"]["image"], ct)
    third = corpus.run(data_params)
    assert third.summary["converted"] == 3 and third.summary["reconverted"] == 1
    assert all((third.out / p).is_file() for p in old)


def test_pool_and_serial_give_the_same_tables(corpus, data_params, tmp_path):
    _build_all(corpus)
    corpus.voc(name="TinyVOC2", n=2)
    ct = corpus.nifti_ct(name="TinyCT2", n=2)
    ct.items["case_001"]["image"].write_bytes(b"garbage")  # a quarantined input too
    serial = corpus.run(data_params, workers=1, out=tmp_path / "serial")
    pooled = corpus.run(data_params, workers=2, out=tmp_path / "pooled")
    for key in ("converted", "quarantined", "total", "images", "boxes", "splits", "sources"):
        assert serial.summary[key] == pooled.summary[key], key
    pd.testing.assert_frame_equal(_sorted(serial.manifest), _sorted(pooled.manifest))
    pd.testing.assert_frame_equal(_sorted(serial.boxes), _sorted(pooled.boxes))
    pd.testing.assert_frame_equal(serial.quarantine, pooled.quarantine)
    for name in ("train.txt", "val.txt", "test.txt", "presence.csv", "omnis.yaml"):
        assert (serial.out / name).read_text() == (pooled.out / name).read_text(), name
    for rel in serial.manifest["image"]:
        assert (serial.out / rel).read_bytes() == (pooled.out / rel).read_bytes(), rel
