"""A mixed 2D mask collection (each image its own subset of class masks) converts with every mask accounted for.

Every mask file the ``{class}`` template matches is either boxed or a row of quarantine.csv with its reason;
masks mapped to one class are merged before boxes; a JPEG-compressed mask gives the clean mask's box; a
source that converts nothing fails ``medrov convert`` unless it is ``optional: true``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT

SIZE = (48, 64)  # rows, cols
TEMPLATE = "masks/{stem}_{class}.png"
MIN_PIXELS = 4
SPECKLES = [(2, 60), (45, 2), (44, 60)]  # isolated pixels, far from the disk: below MIN_PIXELS
YY, XX = np.mgrid[: SIZE[0], : SIZE[1]]


def _rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[r0:r1, c0:c1] = 255
    return mask


def _disk() -> np.ndarray:
    return (((YY - 24) ** 2 + (XX - 40) ** 2) <= 81).astype(np.uint8) * 255


def _jpeg(mask: np.ndarray) -> np.ndarray:
    """The mask as a JPEG collection stores it: lossy, values between 0 and 255 around every edge."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="JPEG", quality=75)
    return np.asarray(Image.open(buffer)).copy()


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(root: Path, stem: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    return _save(root / "images" / f"{stem}.png", rng.integers(30, 220, SIZE, dtype=np.uint8))


def _collection(raw: Path) -> tuple[list[dict], dict[str, Path]]:
    """Three sources in ``raw``: the mixed one, one with ``classes: [liver]``, an optional one that gives nothing."""
    mixed, listed, allnull = raw / "Mixed", raw / "Listed", raw / "AllNull"
    masks = mixed / "masks"
    jpeg = _jpeg(_disk())
    for r, c in SPECKLES:
        jpeg[r, c] = 200
    files = {
        # a: two kidney masks -> kidney (apart: two boxes); tumour and its core -> kidney tumor (one box)
        "a_liver": _save(masks / "a_liver.png", _rect(2, 12, 2, 20)),
        "a_kidney_left": _save(masks / "a_kidney_left.png", _rect(20, 30, 5, 15)),
        "a_kidney_right": _save(masks / "a_kidney_right.png", _rect(20, 30, 45, 55)),
        "a_tumor": _save(masks / "a_tumor.png", _rect(34, 44, 20, 40)),
        "a_tumor_core": _save(masks / "a_tumor_core.png", _rect(36, 42, 24, 30)),
        # b: the JPEG-compressed disk with speckles; c: the same disk, clean, and a spleen
        "b_liver": _save(masks / "b_liver.png", jpeg),
        "c_liver": _save(masks / "c_liver.png", _disk()),
        "c_spleen": _save(masks / "c_spleen.png", _rect(1, 8, 1, 8)),
        # d: a liver, a mask class nobody listed, a background mask mapped to null
        "d_liver": _save(masks / "d_liver.png", _rect(10, 20, 10, 20)),
        "d_marker": _save(masks / "d_marker.png", _rect(0, 4, 0, 4)),
        "d_bg": _save(masks / "d_bg.png", _rect(0, 48, 0, 64)),
        # e: only masks mapped to null (with plenty of foreground); z: a mask whose image is missing
        "e_bg": _save(masks / "e_bg.png", _rect(0, 48, 0, 64)),
        "z_liver": _save(masks / "z_liver.png", _rect(0, 48, 0, 64)),
        # g (source Listed): a liver among masks of classes not in its classes: [liver]
        "g_liver": _save(listed / "masks" / "g_liver.png", _rect(5, 15, 5, 15)),
        "g_kidney": _save(listed / "masks" / "g_kidney.png", _rect(20, 30, 5, 15)),
        "g_spleen": _save(listed / "masks" / "g_spleen.png", _rect(20, 30, 30, 40)),
        # h (source AllNull, optional): its one image's masks all map to null
        "h_bg": _save(allnull / "masks" / "h_bg.png", _rect(0, 10, 0, 10)),
    }
    for seed, stem in enumerate("abcdef"):  # f has no mask at all
        files[stem] = _image(mixed, stem, seed)
    files["g"], files["h"] = _image(listed, "g", 7), _image(allnull, "h", 8)
    common = {"modality": "ct", "format": "mask2d", "images": "images/*.png", "labels": TEMPLATE}
    entries = [
        {
            "name": "Mixed",
            "root": str(mixed),
            **common,
            "label_map": {
                "kidney_left": "kidney",
                "kidney_right": "kidney",
                "tumor": "kidney tumor",
                "tumor_core": "kidney tumor",
                "bg": None,
            },
        },
        {"name": "Listed", "root": str(listed), **common, "classes": ["liver"]},
        {"name": "AllNull", "root": str(allnull), **common, "label_map": {"bg": None}, "optional": True},
    ]
    return entries, files


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, data_params_module):
    from medrov.data import convert

    root = tmp_path_factory.mktemp("mask2d")
    entries, files = _collection(root / "raw")
    sources = root / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
    params = data_params_module.model_copy(update={"min_box_pixels": MIN_PIXELS})
    summary = convert.run(params, sources_file=sources, out_dir=root / "omnis", progress=False)
    out = root / "omnis"
    return {
        "summary": summary,
        "files": files,
        "out": out,
        "boxes": pd.read_parquet(out / "boxes.parquet"),
        "manifest": pd.read_parquet(out / "manifest.parquet"),
        "quarantine": pd.read_csv(out / "quarantine.csv", keep_default_na=False, dtype=str),
    }


@pytest.fixture(scope="module")
def data_params_module():
    from medrov.config import load_params

    return load_params(ROOT / "params.yaml", ["data.workers=1"]).data


def _boxes_of(mixed, source: str, stem: str) -> list[tuple]:
    b = mixed["boxes"]
    rows = b[b["image"] == f"images/{source}/images__{stem}.png"]
    return sorted(zip(rows["class_name"], rows["x0"], rows["y0"], rows["x1"], rows["y1"]))


def _row(mixed, file: Path) -> dict:
    q = mixed["quarantine"]
    rows = q[q["input"] == str(file)]
    assert len(rows) == 1, f"{file} has {len(rows)} quarantine rows:\n{q.to_string()}"
    return rows.iloc[0].to_dict()


def test_every_mask_file_is_boxed_or_quarantined_with_its_reason(mixed):
    f = mixed["files"]
    boxed = {  # mask -> (source, image stem, class its box has)
        "a_liver": ("Mixed", "a", "liver"),
        "a_kidney_left": ("Mixed", "a", "kidney"),
        "a_kidney_right": ("Mixed", "a", "kidney"),
        "a_tumor": ("Mixed", "a", "kidney tumor"),
        "a_tumor_core": ("Mixed", "a", "kidney tumor"),
        "b_liver": ("Mixed", "b", "liver"),
        "c_liver": ("Mixed", "c", "liver"),
        "c_spleen": ("Mixed", "c", "spleen"),
        "d_liver": ("Mixed", "d", "liver"),
        "g_liver": ("Listed", "g", "liver"),
    }
    quarantined = {  # mask -> words of its reason
        "d_marker": ["'marker'", "neither a vocabulary class nor in label_map", "d.png"],
        "d_bg": ["maps 'bg' to null"],
        "e_bg": ["maps 'bg' to null"],
        "g_kidney": ["class 'kidney' not in classes: [liver]"],
        "g_spleen": ["class 'spleen' not in classes: [liver]"],
        "h_bg": ["maps 'bg' to null"],
        "z_liver": ["mask of no image", "'images/*.png'", TEMPLATE],
    }
    every_mask = {p for p in (mixed["out"].parent / "raw").rglob("masks/*.png")}
    assert every_mask == {f[k] for k in (*boxed, *quarantined)}  # the test itself covers every file
    for key, (source, stem, cls) in boxed.items():
        assert cls in [b[0] for b in _boxes_of(mixed, source, stem)], key
        assert not (mixed["quarantine"]["input"] == str(f[key])).any(), key
    for key, words in quarantined.items():
        row = _row(mixed, f[key])
        assert row["level"] == "mask", row
        for word in words:
            assert word in row["reason"], (key, row["reason"])


def test_images_without_a_usable_mask_say_why(mixed):
    f = mixed["files"]
    e = _row(mixed, f["e"])
    assert e["level"] == "input" and "every mask maps to null" in e["reason"] and "empty" not in e["reason"]
    none = _row(mixed, f["f"])
    assert none["level"] == "input"
    reason = none["reason"]
    assert TEMPLATE in reason and "discovered from file names" in reason
    assert "looked for masks/f_<class>.png" in reason  # the path looked for, relative to the source root
    assert "masks/ holds 13 file(s): a_kidney_left.png" in reason  # what the mask folder does hold
    assert "every mask maps to null" in _row(mixed, f["h"])["reason"]


def test_masks_of_one_class_are_merged_before_boxes(mixed):
    a = _boxes_of(mixed, "Mixed", "a")
    # the tumour core lies inside the tumour: one box, the tumour's, not a duplicate or a nested second box
    assert [b for b in a if b[0] == "kidney tumor"] == [("kidney tumor", 20.0, 34.0, 40.0, 44.0)]
    # left and right kidney are apart: merged, they still give one box each
    assert [b for b in a if b[0] == "kidney"] == [("kidney", 5.0, 20.0, 15.0, 30.0), ("kidney", 45.0, 20.0, 55.0, 30.0)]
    keys = ["image", "class_id", "x0", "y0", "x1", "y1"]
    assert not mixed["boxes"].duplicated(keys).any()


def test_jpeg_mask_gives_the_clean_mask_box(mixed):
    jpeg, clean = _boxes_of(mixed, "Mixed", "b"), _boxes_of(mixed, "Mixed", "c")
    assert jpeg == [("liver", 31.0, 15.0, 50.0, 34.0)]
    assert [b for b in clean if b[0] == "liver"] == jpeg
    stored = np.asarray(Image.open(mixed["files"]["b_liver"]))
    assert len(np.unique(stored)) > 10  # really compressed: a plain `> 0` would have grown the box
    ys, xs = np.nonzero(stored)
    assert (xs.min(), ys.min()) != (31, 15)


def test_summary_counts(mixed):
    s = mixed["summary"]
    assert (s["converted"], s["quarantined"], s["total"]) == (5, 3, 8)  # a b c d g | e f h
    assert s["masks_merged"] == 4  # kidney_left + kidney_right, tumor + tumor_core
    assert s["masks_binarised"] == 1 and s["speckles_removed"] == len(SPECKLES)
    assert s["masks_quarantined"] == 7
    assert s["sources"]["Mixed"]["masks_merged"] == 4 and s["sources"]["Listed"]["masks_quarantined"] == 2
    assert (s["sources"]["Mixed"]["inputs"], s["sources"]["Mixed"]["quarantined"]) == (6, 2)
    assert s["empty_sources"] == {}  # AllNull gave nothing, but it is optional


def test_dataset_card_counts_every_input_and_source(mixed, tmp_path):
    from medrov.data import report

    text = report.run(mixed["out"], tmp_path / "card").read_text()
    images = len(mixed["manifest"])
    assert f"{images} images from 8 inputs (3 quarantined) of 3 sources" in text
    assert "| AllNull | ct | 1 | 0 | 1 | 0 | 0 | 0 |" in text  # every input quarantined, still listed
    assert "| Mixed | ct | 6 | 4 | 2 | 4 |" in text
    assert "7 mask files not used" in text


# ---------------------------------------------------------------- a source that converts nothing


def _convert(sources: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDROV_ROOT": str(ROOT)}
    cmd = [sys.executable, "-m", "medrov", "convert", "--sources", str(sources), "--out", str(out), "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_source_that_converts_nothing_fails_unless_optional(tmp_path):
    raw = tmp_path / "raw"
    good = raw / "Good"
    _image(good, "x", 1)
    _save(good / "masks" / "x_liver.png", _rect(5, 15, 5, 15))
    _image(raw / "AllBad", "y", 2)
    _save(raw / "AllBad" / "masks" / "y_bg.png", _rect(5, 15, 5, 15))
    (raw / "NoMatch" / "images").mkdir(parents=True)
    common = {"modality": "ct", "format": "mask2d", "labels": TEMPLATE}
    entries = [
        {"name": "Good", "root": str(good), "images": "images/*.png", **common},
        {"name": "AllBad", "root": str(raw / "AllBad"), "images": "images/*.png", "label_map": {"bg": None}, **common},
        {"name": "NoMatch", "root": str(raw / "NoMatch"), "images": "images/*.jpg", **common},
    ]
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
    failed = _convert(sources, tmp_path / "omnis")
    assert failed.returncode == 1, failed.stderr
    error = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, failed.stderr
    assert "EmptySource" in error[0] and str(sources) in error[0]
    assert "source AllBad converted nothing: every one of its 1 input(s) was quarantined" in error[0]
    assert "every mask maps to null" in error[0]
    assert "source NoMatch converted nothing: found no inputs: 'images/*.jpg'" in error[0]
    assert "Good" not in error[0].split("converted nothing")[0]
    assert "converted 1, quarantined 1, total 2" in failed.stdout  # the summary still comes first

    for entry in entries[1:]:
        entry["optional"] = True
    sources.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
    passed = _convert(sources, tmp_path / "omnis")
    assert passed.returncode == 0, passed.stderr
    assert "optional source NoMatch converted nothing" in passed.stderr


def test_discovered_classes_are_annotated_and_the_gate_passes(mixed):
    from medrov.config import load_params
    from medrov.data import validate

    presence = pd.read_csv(mixed["out"] / "presence.csv", index_col=0)
    assert presence.loc["Mixed", ["liver", "spleen", "kidney", "kidney tumor"]].tolist() == [1, 1, 1, 1]
    assert presence.loc["Listed", "liver"] == 1 and presence.loc["Listed", "kidney"] == 0  # quarantined, not annotated
    summary = validate.run(load_params(ROOT / "params.yaml").validate_, data_dir=mixed["out"])
    assert summary["success"], validate.summary_lines(summary)
