"""The demo generator's known truth: every object of every class of every synthetic image, annotated by its
source or not, written beside the sources where conversion never reads it."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medrov.config import load_params
from medrov.data import demo
from tests.conftest import ROOT

SMALL = [
    "demo.ct_volumes=2",
    "demo.mri_volumes=2",
    "demo.volume_shape=[64,64,4]",
    "demo.xray_images=6",
    "demo.microscopy_images=4",
    "demo.endoscopy_images=4",
    "demo.image_size=64",
]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    params = load_params(ROOT / "params.yaml", SMALL)
    counts = demo.generate(params.demo, out)
    return out, params.demo, counts


def _truth_boxes(folder: Path) -> dict[str, set[tuple]]:
    rows = defaultdict(set)
    with (folder / "boxes.csv").open() as fh:
        for r in csv.DictReader(fh):
            rows[r["image"]].add((r["label"], int(r["x1"]), int(r["y1"]), int(r["x2"]), int(r["y2"])))
    return rows


def test_truth_indexes_every_image_of_every_source(generated):
    out, cfg, counts = generated
    index = json.loads((demo.truth_dir(cfg, out) / "truth.json").read_text())["sources"]
    assert set(index) == set(counts)
    for source, n in counts.items():
        assert len(index[source]["items"]) == n, source


def test_volume_truth_holds_the_annotated_labels_and_the_unannotated_organs(generated):
    out, cfg, _ = generated
    truth = demo.truth_dir(cfg, out)
    ids = demo.TRUTH_IDS
    annotated = {
        "SynthAbdomenCT": {1: "liver", 2: "spleen"},
        "SynthKidneyCT": {1: "right kidney", 2: "left kidney", 3: "kidney tumor"},
        "SynthAbdomenMRI": {1: "liver", 2: "right kidney", 3: "left kidney"},
    }
    unannotated = {
        "SynthAbdomenCT": {"right kidney", "left kidney"},
        "SynthKidneyCT": {"liver", "spleen"},
        "SynthAbdomenMRI": {"spleen"},
    }
    for source, label_map in annotated.items():
        for label_file in sorted((out / source / "labels").glob("*.nii.gz")):
            src = nib.load(label_file)
            full = nib.load(truth / source / "labels" / label_file.name)
            assert np.allclose(src.affine, full.affine)  # same geometry: the truth overlays the source voxel by voxel
            s, t = np.asarray(src.dataobj), np.asarray(full.dataobj)
            for value, name in label_map.items():
                assert np.array_equal(s == value, t == ids[name]), (label_file, name)
            for name in unannotated[source]:
                assert (t == ids[name]).any() and name not in label_map.values(), (label_file, name)


def test_2d_truth_contains_every_source_annotation(generated):
    out, cfg, _ = generated
    truth = demo.truth_dir(cfg, out)
    xray = _truth_boxes(truth / "SynthChestXray")
    with (out / "SynthChestXray" / "boxes.csv").open() as fh:
        for r in csv.DictReader(fh):
            assert (r["label"], int(r["x1"]), int(r["y1"]), int(r["x2"]), int(r["y2"])) in xray[r["image"]]
    smear = _truth_boxes(truth / "SynthBloodSmear")
    coco = json.loads((out / "SynthBloodSmear" / "annotations.json").read_text())
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    cats = {1: "red blood cell", 2: "white blood cell", 3: "platelets"}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        assert (cats[a["category_id"]], x, y, x + w, y + h) in smear[files[a["image_id"]]]
    assert sum(len(v) for v in smear.values()) == len(coco["annotations"])
    polyp = _truth_boxes(truth / "SynthPolyp")
    for mask_file in sorted((out / "SynthPolyp" / "masks").glob("*.png")):
        mask = np.asarray(Image.open(mask_file)) > 0
        boxes = polyp[mask_file.name.replace("_polyp", "")]
        assert mask.any() and boxes
        ys, xs = np.nonzero(mask)  # the union of the truth boxes spans the mask exactly
        assert (
            min(b[1] for b in boxes),
            min(b[2] for b in boxes),
            max(b[3] for b in boxes),
            max(b[4] for b in boxes),
        ) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_same_seed_same_truth(generated, tmp_path):
    out, cfg, _ = generated
    again = tmp_path / "again"
    demo.generate(cfg, again)
    first, second = demo.truth_dir(cfg, out), demo.truth_dir(cfg, again)
    assert (first / "truth.json").read_text() == (second / "truth.json").read_text()
    assert (first / "SynthChestXray" / "boxes.csv").read_bytes() == (
        second / "SynthChestXray" / "boxes.csv"
    ).read_bytes()


def test_conversion_never_reads_the_truth(tiny_omnis):
    raw = tiny_omnis.parent / "raw" / "synthetic"
    truth = (raw / load_params(ROOT / "params.yaml").demo.truth).resolve()
    assert (truth / "truth.json").is_file()
    inputs = pd.read_parquet(tiny_omnis / "manifest.parquet")["input"].astype(str)
    assert len(inputs) and all(raw.resolve() in Path(p).resolve().parents for p in inputs)
    assert not any(truth in (Path(p) if Path(p).is_absolute() else raw / p).resolve().parents for p in inputs)
    sources = (ROOT / "data" / "sources.yaml").read_text()
    assert "truth" not in sources.split("sources:", 1)[1]


def test_truth_converts_into_a_fully_annotated_omnis_with_the_same_splits(generated, tmp_path):
    from medrov.data import convert

    out, cfg, _ = generated
    params = load_params(ROOT / "params.yaml", [*SMALL, "data.workers=1"])
    demo_file = tmp_path / "sources.yaml"
    demo_file.write_text((ROOT / "data" / "sources.yaml").read_text().replace("raw/synthetic/", f"{out}/"))
    convert.run(params.data, sources_file=demo_file, out_dir=tmp_path / "demo", progress=False)
    convert.run(
        params.data, sources_file=demo.truth_dir(cfg, out) / "sources.yaml", out_dir=tmp_path / "truth", progress=False
    )
    shown, full = (pd.read_parquet(tmp_path / d / "boxes.parquet") for d in ("demo", "truth"))
    pairs = lambda b: set(zip(b["source"], b["class_name"]))  # noqa: E731
    assert pairs(shown) < pairs(full)
    assert {("SynthAbdomenCT", "right kidney"), ("SynthKidneyCT", "liver"), ("SynthAbdomenMRI", "spleen")} <= pairs(
        full
    ) - pairs(shown)
    key = ["image", "class_name", "x0", "y0", "x1", "y1"]
    assert len(shown.merge(full, on=key)) == len(shown)  # every demo box is a truth box
    splits = lambda d: pd.read_parquet(tmp_path / d / "manifest.parquet").set_index("image")["split"]  # noqa: E731
    common = splits("demo").index.intersection(splits("truth").index)
    assert len(common) == len(splits("demo")) and (splits("demo")[common] == splits("truth")[common]).all()
    presence = pd.read_csv(tmp_path / "truth" / "presence.csv", index_col=0)
    assert presence.loc["SynthAbdomenCT", "right kidney"] == 1 and presence.loc["SynthKidneyCT", "spleen"] == 1
