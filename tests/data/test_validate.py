"""The Great Expectations gate (``medrov validate``) on a small valid Omnis folder broken one way at a time.

One small valid folder (the six synthetic demo sources, a few inputs each) is generated and converted once per
module. Every breaking test copies it, breaks it in ONE way and checks the contract of ``validate.run``:
``success`` is False, the expected check (table.column) failed with ``unexpected_count`` equal to the number of
rows broken, its report line names the broken file, and no unrelated error check failed (where the breakage
cannot avoid tripping a second check, that check is named explicitly). Warnings never fail the gate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
import yaml

from medrov.config import load_params
from medrov.data import validate
from medrov.data.validate import CheckResult
from tests.conftest import ROOT

DEMO_OVERRIDES = [
    "demo.ct_volumes=2",
    "demo.mri_volumes=2",
    "demo.xray_images=4",
    "demo.microscopy_images=4",
    "demo.endoscopy_images=4",
]
DEMO_SOURCES = ["SynthAbdomenCT", "SynthKidneyCT", "SynthAbdomenMRI", "SynthChestXray", "SynthBloodSmear", "SynthPolyp"]
REPORT_PNGS = [
    "images_per_source.png",
    "images_per_modality.png",
    "boxes_per_source.png",
    "class_frequency.png",
    "box_sizes.png",
    "samples.png",
    "presence.png",
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml", DEMO_OVERRIDES)


@pytest.fixture(scope="module")
def vparams(params):
    return params.validate_


@pytest.fixture(scope="module")
def valid(params, tmp_path_factory) -> Path:
    """The converted valid folder shared by the module: never modified by a test (copy it first)."""
    from medrov.data import convert, demo

    root = tmp_path_factory.mktemp("omnis_valid")
    demo.generate(params.demo, root / "raw")
    entries = yaml.safe_load((ROOT / "data" / "sources.yaml").read_text())["sources"][:6]
    assert [e["name"] for e in entries] == DEMO_SOURCES
    for entry in entries:
        entry["root"] = str(root / "raw" / entry["name"])
    sources = root / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
    summary = convert.run(params.data, sources_file=sources, out_dir=root / "omnis", workers=1, progress=False)
    assert summary["quarantined"] == 0 and summary["images"] > 0
    return root / "omnis"


@pytest.fixture(scope="module")
def valid_report(valid, vparams, tmp_path_factory) -> tuple[dict[str, Any], Path]:
    """The valid folder validated once with a Data Docs report (shared by the passing and Data Docs tests)."""
    report = tmp_path_factory.mktemp("report") / "validate"
    return validate.run(vparams, data_dir=valid, report_dir=report), report


@pytest.fixture
def copy(valid, tmp_path) -> Path:
    """A private copy of the valid folder, to break."""
    return Path(shutil.copytree(valid, tmp_path / "omnis"))


# ---------------------------------------------------------------- helpers


def manifest_of(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "manifest.parquet")


def boxes_of(d: Path) -> pd.DataFrame:
    return pd.read_parquet(d / "boxes.parquet")


def label_line(row) -> str:
    """The label-file line convert writes for a box row."""
    return f"{int(row['class_id'])} {row['x_center']:.6f} {row['y_center']:.6f} {row['width']:.6f} {row['height']:.6f}"


def label_path(d: Path, image: str) -> Path:
    m = manifest_of(d)
    return d / m.loc[m["image"] == image, "label"].iloc[0]


def image_with_boxes(d: Path, n: int | None = None, at_least: int = 1, source: str | None = None) -> pd.Series:
    """The first manifest row with exactly ``n`` boxes (else at least ``at_least``), optionally of one source.

    Demo images hold several objects (every CT/MRI slice shows two or more organs): a test that needs an image
    with a single box asks for ``n=1`` from any source."""
    m = manifest_of(d)
    if source:
        m = m[m["source"] == source]
    chosen = m[m["n_boxes"] == n] if n is not None else m[m["n_boxes"] >= at_least]
    assert len(chosen), "the demo folder has no such image"
    return chosen.iloc[0]


def edit_box(d: Path, image: str, **changes: Any) -> tuple[str, str]:
    """Change the first box of ``image`` in boxes.parquet AND the matching line of its label file (so the two
    stay consistent and only the value check fires). Returns (old line, new line)."""
    boxes = boxes_of(d)
    idx = boxes.index[boxes["image"] == image][0]
    old = label_line(boxes.loc[idx])
    for key, value in changes.items():
        boxes.loc[idx, key] = value
    new = label_line(boxes.loc[idx])
    boxes.to_parquet(d / "boxes.parquet", index=False)
    label = label_path(d, image)
    lines = label.read_text().splitlines()
    assert old in lines
    lines[lines.index(old)] = new
    label.write_text("\n".join(lines) + "\n")
    return old, new


def run(d: Path, vparams) -> dict[str, Any]:
    return validate.run(vparams, data_dir=d)


def results(summary: dict[str, Any], table: str, column: str, expectation: str | None = None) -> list[dict[str, Any]]:
    found = [
        r
        for r in summary["results"]
        if r["table"] == table and r["column"] == column and (expectation is None or r["expectation"] == expectation)
    ]
    assert found, f"no check {table}.{column} {expectation or ''}"
    return found


def failed_errors(summary: dict[str, Any]) -> set[str]:
    return {f"{r['table']}.{r['column']}" for r in summary["results"] if not r["success"] and r["severity"] == "error"}


def expect_failure(
    summary: dict[str, Any],
    table: str,
    column: str,
    count: int,
    example: str,
    expectation: str | None = None,
    also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The gate failed on ``table.column`` for ``count`` rows, its line shows ``example``; the only other error
    checks that failed are ``also`` (checks the breakage cannot avoid tripping)."""
    assert summary["success"] is False
    (r,) = results(summary, table, column, expectation)
    line = CheckResult(**r).line()
    assert r["success"] is False, line
    assert r["severity"] == "error"
    assert r["unexpected_count"] == count, line
    assert line.startswith(f"FAIL {table}.{column}: "), line
    assert example in line, line
    assert f"{count} of {r['element_count']} rows" in line, line
    assert failed_errors(summary) == {f"{table}.{column}", *also}, validate.summary_lines(summary)
    assert summary["failed"] == sum(1 for x in summary["results"] if not x["success"] and x["severity"] == "error")
    return r


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path, format="PNG")


# ---------------------------------------------------------------- the valid folder


def test_valid_folder_passes(valid_report):
    summary, _ = valid_report
    lines = validate.summary_lines(summary)
    assert summary["success"] is True, lines
    assert summary["failed"] == 0 and summary["warnings"] == 0, lines
    assert summary["passed"] == summary["expectations"] == len(summary["results"]) > 30
    assert all(r["success"] for r in summary["results"])
    rows = summary["rows_checked"]
    assert rows["manifest"] > 0 and rows["boxes"] == rows["label_lines"] > 0
    assert rows["files"] == 2 * rows["manifest"]
    assert lines[-1].startswith(
        f"validate: {summary['passed']} of {summary['expectations']} expectations passed, 0 failed"
    )
    metrics = validate.metrics(summary)
    assert metrics["success"] is True and metrics["failed"] == 0
    assert all(c["success"] and c["unexpected"] == 0 for c in metrics["checks"].values())


# ---------------------------------------------------------------- boxes


def test_box_x_center_above_one(copy, vparams):
    image = image_with_boxes(copy, source="SynthAbdomenCT")["image"]
    edit_box(copy, image, x_center=1.2)
    s = run(copy, vparams)
    # a centre right of the image puts the right edge outside too; the label file says the same as the table
    expect_failure(s, "boxes", "x_center", 1, image, also=("boxes.x_max", "label_lines.x_center"))
    assert results(s, "boxes", "x_max")[0]["unexpected_count"] == 1
    (lab,) = results(s, "label_lines", "x_center")
    assert lab["unexpected_count"] == 1
    assert label_path(copy, image).relative_to(copy).as_posix() in CheckResult(**lab).line()


def test_box_width_zero(copy, vparams):
    image = image_with_boxes(copy, source="SynthAbdomenMRI")["image"]
    edit_box(copy, image, width=0.0)
    s = run(copy, vparams)
    expect_failure(s, "boxes", "width", 1, image, also=("label_lines.width",))
    assert results(s, "label_lines", "width")[0]["unexpected_count"] == 1


def test_box_sticking_out_of_the_image(copy, vparams):
    image = image_with_boxes(copy, source="SynthKidneyCT")["image"]
    edit_box(copy, image, x_center=0.99, width=0.1)
    s = run(copy, vparams)
    expect_failure(s, "boxes", "x_max", 1, image)


def test_box_class_id_not_in_vocabulary(copy, vparams):
    image = image_with_boxes(copy, source="SynthChestXray", n=None, at_least=1)["image"]
    edit_box(copy, image, class_id=9999)
    s = run(copy, vparams)
    expect_failure(s, "boxes", "class_id", 1, image, also=("label_lines.class_id",))
    assert results(s, "label_lines", "class_id")[0]["unexpected_count"] == 1


def test_box_class_name_does_not_match_its_id(copy, vparams):
    boxes = boxes_of(copy)
    idx = boxes.index[(boxes["source"] == "SynthAbdomenCT") & (boxes["class_name"] == "liver")][0]
    boxes.loc[idx, "class_name"] = "spleen"  # annotated in this source too: only the name check can see it
    boxes.to_parquet(copy / "boxes.parquet", index=False)
    s = run(copy, vparams)
    expect_failure(s, "boxes", "name_mismatch", 1, boxes.loc[idx, "image"])
    assert "is liver, not spleen" in CheckResult(**results(s, "boxes", "name_mismatch")[0]).line()


def test_duplicate_box_row(copy, vparams):
    row = image_with_boxes(copy, source="SynthAbdomenCT")
    boxes = boxes_of(copy)
    dup = boxes[boxes["image"] == row["image"]].iloc[[0]]
    pd.concat([boxes, dup], ignore_index=True).to_parquet(copy / "boxes.parquet", index=False)
    # keep the label file and n_boxes consistent: only the uniqueness check may fire
    label = copy / row["label"]
    label.write_text(label.read_text() + label_line(dup.iloc[0]) + "\n")
    m = manifest_of(copy)
    m.loc[m["image"] == row["image"], "n_boxes"] += 1
    m.to_parquet(copy / "manifest.parquet", index=False)
    s = run(copy, vparams)
    # both copies of the duplicated row are unexpected
    expect_failure(s, "boxes", "image,class_id,x_center,y_center,width,height", 2, row["image"])


def test_box_of_an_image_not_in_the_manifest(copy, vparams):
    boxes = boxes_of(copy)
    ghost = boxes[boxes["source"] == "SynthPolyp"].iloc[[0]].copy()
    ghost["image"] = "images/SynthPolyp/ghost_frame.png"
    pd.concat([boxes, ghost], ignore_index=True).to_parquet(copy / "boxes.parquet", index=False)
    s = run(copy, vparams)
    # an image without a manifest row has no label file either
    expect_failure(
        s,
        "boxes",
        "image_not_in_manifest",
        1,
        "images/SynthPolyp/ghost_frame.png",
        also=("boxes.missing_from_label_file",),
    )
    assert results(s, "boxes", "missing_from_label_file")[0]["unexpected_count"] == 1


# ---------------------------------------------------------------- images and files


def test_image_file_deleted(copy, vparams):
    image = manifest_of(copy)["image"].iloc[5]
    (copy / image).unlink()
    expect_failure(run(copy, vparams), "manifest", "image_missing", 1, image)


def test_label_file_deleted(copy, vparams):
    row = image_with_boxes(copy, n=1)
    (copy / row["label"]).unlink()
    s = run(copy, vparams)
    # its one box is then in no label file
    expect_failure(s, "manifest", "label_missing", 1, row["label"], also=("boxes.missing_from_label_file",))
    (r,) = results(s, "boxes", "missing_from_label_file")
    assert r["unexpected_count"] == 1 and row["image"] in CheckResult(**r).line()


def test_orphan_image_file(copy, vparams):
    first = manifest_of(copy)["image"].iloc[0]
    orphan = "images/SynthPolyp/not_in_manifest.png"
    shutil.copy(copy / first, copy / orphan)
    (copy / "labels" / "SynthPolyp.cache").write_bytes(b"ultralytics label index")  # written by training: not an orphan
    expect_failure(run(copy, vparams), "files", "orphan", 1, orphan)


def test_image_size_differs_from_manifest(copy, vparams):
    row = image_with_boxes(copy, source="SynthAbdomenMRI")
    w, h = int(row["width"]), int(row["height"])
    write_png(copy / row["image"], np.random.default_rng(0).integers(0, 255, (h + 7, w - 5), dtype=np.uint8))
    s = run(copy, vparams)
    r = expect_failure(s, "manifest", "size_mismatch", 1, row["image"])
    assert f"manifest {w}x{h}, file {w - 5}x{h + 7}" in CheckResult(**r).line()


def test_unreadable_image(copy, vparams):
    image = image_with_boxes(copy, source="SynthBloodSmear", n=None, at_least=1)["image"]
    (copy / image).write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    expect_failure(run(copy, vparams), "manifest", "unreadable", 1, image)


def test_truncated_image(copy, vparams):
    """A PNG cut in half has a valid header (size matches) but does not decode: still unreadable."""
    image = image_with_boxes(copy, source="SynthChestXray", n=None, at_least=1)["image"]
    data = (copy / image).read_bytes()
    (copy / image).write_bytes(data[: len(data) // 2])
    expect_failure(run(copy, vparams), "manifest", "unreadable", 1, image)


def test_parallel_and_fully_sampled_validation_give_the_same_verdict(copy, vparams):
    """A truncated image fails the gate alike on one worker, on 3 processes, and sampled at 1.0 or by count."""
    image = image_with_boxes(copy, source="SynthChestXray", n=None, at_least=1)["image"]
    data = (copy / image).read_bytes()
    (copy / image).write_bytes(data[: len(data) // 2])
    n = len(manifest_of(copy))
    verdicts = []
    for update in ({"workers": 1}, {"workers": 3}, {"workers": 2, "pixel_sample": 1.0}, {"pixel_sample": n}):
        summary = run(copy, vparams.model_copy(update=update))
        expect_failure(summary, "manifest", "unreadable", 1, image)
        assert summary["pixels_decoded"] == n
        verdicts.append([(r["table"], r["column"], r["success"], r["unexpected_count"]) for r in summary["results"]])
    assert all(v == verdicts[0] for v in verdicts[1:])


def test_pixel_sample_decodes_a_fixed_subset_and_headers_cover_every_row(copy, vparams):
    manifest = manifest_of(copy)
    n = len(manifest)
    chosen = validate.pixel_rows(manifest["image"], 0.25)
    assert chosen.sum() == round(n * 0.25) and (chosen == validate.pixel_rows(manifest["image"], 0.25)).all()
    assert validate.pixel_rows(manifest["image"], 3).sum() == 3 and validate.pixel_rows(manifest["image"], 1.0).all()
    # a constant image left out of the sample passes; a size mismatch (read from the header) never escapes
    outside = manifest[~validate.pixel_rows(manifest["image"], 3)].iloc[0]
    write_png(copy / outside["image"], np.zeros((int(outside["height"]), int(outside["width"])), dtype=np.uint8))
    summary = run(copy, vparams.model_copy(update={"pixel_sample": 3}))
    assert summary["success"] and summary["pixels_decoded"] == 3
    write_png(copy / outside["image"], np.full((7, 9), 128, dtype=np.uint8))
    expect_failure(
        run(copy, vparams.model_copy(update={"pixel_sample": 3})), "manifest", "size_mismatch", 1, outside["image"]
    )


def test_constant_image(copy, vparams):
    row = image_with_boxes(copy, source="SynthAbdomenCT")
    write_png(copy / row["image"], np.zeros((int(row["height"]), int(row["width"])), dtype=np.uint8))
    expect_failure(run(copy, vparams), "manifest", "constant_image", 1, row["image"])


def test_n_boxes_mismatch(copy, vparams):
    m = manifest_of(copy)
    m.loc[3, "n_boxes"] += 1
    m.to_parquet(copy / "manifest.parquet", index=False)
    s = run(copy, vparams)
    r = expect_failure(s, "manifest", "n_boxes_mismatch", 1, m.loc[3, "image"])
    assert f"n_boxes {m.loc[3, 'n_boxes']}, boxes table {m.loc[3, 'n_boxes'] - 1}" in CheckResult(**r).line()


# ---------------------------------------------------------------- label files


def test_label_line_with_four_fields(copy, vparams):
    row = image_with_boxes(copy, source="SynthPolyp", n=None, at_least=1)
    label = copy / row["label"]
    n = len(label.read_text().splitlines())
    label.write_text(label.read_text() + "0 0.5 0.5 0.1\n")
    expect_failure(run(copy, vparams), "label_lines", "parse_error", 1, f"{row['label']}:{n + 1}")


def test_label_line_out_of_range(copy, vparams):
    row = image_with_boxes(copy, source="SynthAbdomenMRI", n=None, at_least=2)
    label = copy / row["label"]
    lines = label.read_text().splitlines()
    fields = lines[0].split()
    fields[4] = "1.500000"  # height > 1, in the label file only
    lines[0] = " ".join(fields)
    label.write_text("\n".join(lines) + "\n")
    s = run(copy, vparams)
    # the file now disagrees with the boxes table both ways
    expect_failure(
        s,
        "label_lines",
        "height",
        1,
        row["label"],
        also=("label_lines.missing_from_boxes_table", "boxes.missing_from_label_file"),
    )
    assert results(s, "label_lines", "missing_from_boxes_table")[0]["unexpected_count"] == 1
    assert results(s, "boxes", "missing_from_label_file")[0]["unexpected_count"] == 1


def test_label_line_deleted(copy, vparams):
    row = image_with_boxes(copy, source="SynthBloodSmear", n=None, at_least=2)
    label = copy / row["label"]
    lines = label.read_text().splitlines()
    label.write_text("\n".join(lines[1:]) + "\n")
    expect_failure(run(copy, vparams), "boxes", "missing_from_label_file", 1, row["image"])


def test_label_line_added(copy, vparams):
    row = image_with_boxes(copy, source="SynthChestXray", n=None, at_least=1)
    label = copy / row["label"]
    n = len(label.read_text().splitlines())
    label.write_text(label.read_text() + "0 0.500000 0.500000 0.100000 0.100000\n")
    expect_failure(run(copy, vparams), "label_lines", "missing_from_boxes_table", 1, f"{row['label']}:{n + 1}")


def test_label_line_repeated(copy, vparams):
    """A line written twice: the boxes table has the box once, so the second copy is not in it."""
    row = image_with_boxes(copy, n=1)
    label = copy / row["label"]
    text = label.read_text()
    label.write_text(text + text)
    expect_failure(run(copy, vparams), "label_lines", "missing_from_boxes_table", 1, f"{row['label']}:2")


def test_label_file_not_utf8(copy, vparams):
    """A label file of binary garbage must be reported as a failed check, not crash the gate."""
    row = image_with_boxes(copy, source="SynthAbdomenCT")
    (copy / row["label"]).write_bytes(b"\xff\xfe\x00\x81 garbage \x9c\n")
    s = run(copy, vparams)
    assert s["success"] is False
    assert any(row["label"] in line for line in validate.summary_lines(s) if line.startswith("FAIL"))


# ---------------------------------------------------------------- sources and splits


def _set_presence(d: Path, source: str, cls: str, value: int) -> int:
    presence = pd.read_csv(d / "presence.csv", index_col=0)
    assert presence.loc[source, cls] == 1
    presence.loc[source, cls] = value
    presence.to_csv(d / "presence.csv")
    boxes = boxes_of(d)
    return int(((boxes["source"] == source) & (boxes["class_name"] == cls)).sum())


def test_box_of_unannotated_class(copy, vparams):
    n = _set_presence(copy, "SynthPolyp", "colon polyp", 0)
    assert n > 0
    s = run(copy, vparams)
    expect_failure(s, "boxes", "presence", n, "SynthPolyp/colon polyp", expectation="expect_column_values_to_be_in_set")
    assert (
        "annotated there (M = 1)"
        in CheckResult(**results(s, "boxes", "presence", "expect_column_values_to_be_in_set")[0]).line()
    )
    assert results(s, "boxes", "presence", "expect_column_values_to_not_be_in_set")[0]["success"] is True


def test_box_of_class_that_cannot_exist(copy, vparams):
    n = _set_presence(copy, "SynthChestXray", "lung nodule", -1)
    assert n > 0
    s = run(copy, vparams)
    r = expect_failure(
        s, "boxes", "presence", n, "SynthChestXray/lung nodule", expectation="expect_column_values_to_not_be_in_set"
    )
    assert "cannot exist (M = -1)" in CheckResult(**r).line()
    # -1 is not 1 either
    (annotated,) = results(s, "boxes", "presence", "expect_column_values_to_be_in_set")
    assert annotated["success"] is False and annotated["unexpected_count"] == n


def test_box_of_source_missing_from_presence(copy, vparams):
    """A (source, class) with boxes but no entry in presence.csv has no M = 1: the gate must not pass it.

    (A presence.csv that lags behind the dataset, e.g. written before a source was added.)"""
    presence = pd.read_csv(copy / "presence.csv", index_col=0)
    presence.drop(index="SynthPolyp").to_csv(copy / "presence.csv")
    boxes = boxes_of(copy)
    n = int((boxes["source"] == "SynthPolyp").sum())
    s = run(copy, vparams)
    expect_failure(s, "boxes", "presence_missing", n, "SynthPolyp/colon polyp")
    assert "has an entry in presence.csv" in validate.summary_lines(s)[0]


def test_volume_in_two_splits(copy, vparams):
    m = manifest_of(copy)
    volume = m.groupby("volume_id").size().idxmax()
    rows = m.index[m["volume_id"] == volume]
    other = "test" if m.loc[rows[0], "split"] != "test" else "val"
    m.loc[rows[-1], "split"] = other  # one slice of the volume moves
    m.to_parquet(copy / "manifest.parquet", index=False)
    s = run(copy, vparams)
    # the demo's patient is its volume: one broken slice leaks one patient group and one volume group
    assert m.loc[rows[0], "patient_id"] == volume
    r = expect_failure(s, "split_groups", "leak", 2, volume)
    assert other in CheckResult(**r).line()


def test_folder_without_boxes(copy, vparams):
    """Every image kept empty (data.keep_empty_images): no boxes, empty label files. Nothing is wrong with it,
    so the gate must run and pass rather than crash."""
    m = manifest_of(copy)
    m["n_boxes"] = 0
    m.to_parquet(copy / "manifest.parquet", index=False)
    boxes_of(copy).iloc[:0].to_parquet(copy / "boxes.parquet", index=False)
    for label in m["label"]:
        (copy / label).write_text("")
    s = run(copy, vparams)
    assert s["success"] is True, validate.summary_lines(s)
    assert s["rows_checked"]["boxes"] == s["rows_checked"]["label_lines"] == 0


# ---------------------------------------------------------------- warnings do not fail the gate


def _only_warning(summary: dict[str, Any], table: str, column: str) -> dict[str, Any]:
    lines = validate.summary_lines(summary)
    assert summary["success"] is True, lines
    assert summary["failed"] == 0 and summary["warnings"] == 1, lines
    (r,) = results(summary, table, column)
    assert r["severity"] == "warning" and r["success"] is False and r["unexpected_count"] > 0
    assert CheckResult(**r).line().startswith(f"WARN {table}.{column}: ")
    assert lines[0] == CheckResult(**r).line()
    assert validate.metrics(summary)["success"] is True
    return r


def test_class_share_out_of_bounds_only_warns(valid, vparams):
    s = run(valid, vparams.model_copy(update={"class_share": (0.0, 0.1)}))
    r = _only_warning(s, "class_share", "out_of_bounds")
    line = CheckResult(**r).line()
    assert " share 0." in line and r["examples"], line


def test_class_share_override_via_params(valid):
    p = load_params(ROOT / "params.yaml", ["validate.class_share=[0,0.1]"]).validate_
    _only_warning(run(valid, p), "class_share", "out_of_bounds")


def test_box_size_outliers_only_warn(valid, vparams):
    s = run(valid, vparams.model_copy(update={"box_size_mad": 0.01}))
    r = _only_warning(s, "boxes", "size_outlier")
    assert "MADs from the" in CheckResult(**r).line()


# ---------------------------------------------------------------- Data Docs


def test_data_docs_and_validation_json(valid_report):
    summary, report = valid_report
    assert (report / "index.html").is_file()
    assert "<html" in (report / "index.html").read_text().lower()
    saved = json.loads((report / "validation.json").read_text())
    for key in ("success", "expectations", "passed", "failed", "warnings", "rows_checked"):
        assert saved[key] == summary[key], key
    assert len(saved["results"]) == summary["expectations"]
    # the offline summary page lists every check and links the GX result pages, and the index links to it
    page = (report / "summary.html").read_text()
    assert "Omnis validation PASSED" in page and page.count("<tr class=") == summary["expectations"]
    assert "validations/" in page and "cdn" not in page.lower()
    assert (report / "index.html").read_text().count('href="summary.html"') == 1


class _Resources(HTMLParser):
    """Every URL a browser would fetch on opening a page: script/img/iframe/source ``src``, stylesheet and icon
    ``href``, and ``url(...)`` in inline styles (links a user must click are not requests)."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in {"script", "img", "iframe", "source", "embed", "audio", "video", "input"} and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])
        if tag == "object" and a.get("data"):
            self.urls.append(a["data"])
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", a.get("style") or "")
        self._in_style = tag == "style"

    def handle_data(self, data):
        if self._in_style:
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", data) + re.findall(r"@import\s+['\"]([^'\"]+)", data)

    def handle_endtag(self, tag):
        self._in_style = False


def _is_external(url: str) -> bool:
    return bool(re.match(r"^(?:[a-z][a-z0-9+.-]*:)?//", url.strip(), re.I)) and not url.startswith("file:")


def test_data_docs_make_no_external_request(valid_report):
    """Opening any page of the Data Docs fetches nothing outside the report folder (no CDN, no S3 logo with the
    data context id), and every local resource a page names exists."""
    _, report = valid_report
    pages = sorted(report.rglob("*.html"))
    assert len(pages) >= 3  # index, summary and at least one validation result page
    external, missing = [], []
    for page in pages:
        text = page.read_text()
        assert "dataContextId" not in text, page
        parser = _Resources()
        parser.feed(text)
        for url in parser.urls:
            if _is_external(url):
                external.append(f"{page.relative_to(report)}: {url}")
            elif not url.startswith(("data:", "#")) and not (page.parent / url.split("?")[0]).exists():
                missing.append(f"{page.relative_to(report)}: {url}")
    for sheet in report.rglob("*.css"):
        for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", sheet.read_text()):
            if _is_external(url):
                external.append(f"{sheet.relative_to(report)}: {url}")
    assert external == []
    assert missing == []
    # the local stand-ins replace the CDN styles and scripts; the GX logo comes from the site's own static folder
    index = (report / "index.html").read_text()
    assert "static/scripts/medrov_offline.js" in index and "static/images/logo-long.png" in index
    assert (report / "static" / "scripts" / "medrov_offline.js").is_file()


def test_make_offline_scrubs_a_known_context_id(tmp_path):
    """The rewrite drops the context id wherever GX puts it, and external anchors lose their href."""
    from medrov.data.datadocs import make_offline

    cid = "6a0043fb-69ab-46fe-9038-6c90f3d85412"
    (tmp_path / "validations").mkdir()
    page = tmp_path / "validations" / "page.html"
    page.write_text(
        f'<html><head><script src="https://code.jquery.com/jquery.js"></script>'
        f'<link rel="stylesheet" href="//cdn.example.org/x.css"/></head><body data-id="{cid}">'
        f'<img src="https://great-expectations-web-assets.s3.amazonaws.com/logo-long.png?d=1&dataContextId={cid}">'
        f'<a href="https://greatexpectations.io/newsletter">Subscribe</a><a href="../index.html">home</a></body></html>'
    )
    assert make_offline(tmp_path, context_id=cid) == 1
    text = page.read_text()
    assert cid not in text and "https://" not in text and "//cdn" not in text
    assert (
        'src="../static/images/logo-long.png"' in text and "<a>Subscribe</a>" in text and 'href="../index.html"' in text
    )
    assert '<script src="../static/scripts/medrov_offline.js"></script>' in text


def test_data_docs_twice_in_a_row(valid, vparams, valid_report, tmp_path):
    """A second run into the same report folder works (no 'datasource already exists') and agrees."""
    first, report = valid_report
    second = validate.run(vparams, data_dir=valid, report_dir=report)
    assert second["success"] is True
    assert {k: second[k] for k in ("expectations", "passed", "failed")} == {
        k: first[k] for k in ("expectations", "passed", "failed")
    }
    assert json.loads((report / "validation.json").read_text())["passed"] == first["passed"]
    assert (report / "index.html").read_text().count('href="summary.html"') == 1


# ---------------------------------------------------------------- CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "medrov", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_fails_on_a_broken_folder(copy, tmp_path):
    image = manifest_of(copy)["image"].iloc[7]
    (copy / image).unlink()
    metrics_file, report = tmp_path / "m.json", tmp_path / "r"
    proc = _cli("validate", "--data", str(copy), "--metrics", str(metrics_file), "--report", str(report), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = [line for line in proc.stdout.splitlines() if line.strip()]
    fails = [line for line in out if line.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL manifest.image_missing: ") and image in fails[0], proc.stdout
    totals = [line for line in out if line.startswith("validate: ")]
    assert len(totals) == 1 and re.match(r"validate: \d+ of \d+ expectations passed, 1 failed, ", totals[0]), totals
    # the totals line closes the check lines (only the report path may follow)
    assert out[out.index(totals[0]) + 1 :] in ([], [f"report: {report / 'index.html'}"])
    # the DVC metric is the headline; every check's counts are in the report's validation.json
    assert json.loads(metrics_file.read_text()) == {"success": False}
    detail = validate.metrics(json.loads((report / "validation.json").read_text()))
    assert detail["checks"]["manifest.image_missing.column_values_to_be_null"] == {"success": False, "unexpected": 1}
    assert (report / "index.html").is_file() and (report / "validation.json").is_file()


def test_cli_passes_on_the_valid_folder(valid, tmp_path):
    metrics_file, report = tmp_path / "m.json", tmp_path / "r"
    proc = _cli("validate", "--data", str(valid), "--metrics", str(metrics_file), "--report", str(report), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [line for line in proc.stdout.splitlines() if line.startswith(("FAIL", "WARN"))]
    assert "validate: " in proc.stdout and " 0 failed" in proc.stdout
    assert json.loads(metrics_file.read_text()) == {"success": True}
    saved = json.loads((report / "validation.json").read_text())
    assert saved["passed"] == saved["expectations"] > 0 and sum(saved["rows_checked"].values()) > 0


# ---------------------------------------------------------------- dataset card


def test_report_card(valid, tmp_path):
    from PIL import Image

    from medrov.data import report

    out = tmp_path / "card"
    card = report.run(valid, out)
    assert card == out / "README.md"
    text = card.read_text()
    for source in DEMO_SOURCES:
        assert f"| {source} |" in text, source
    for name in REPORT_PNGS:
        assert f"({name})" in text
        path = out / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert img.size[0] > 200 and img.size[1] > 200, (name, img.size)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real_omnis(tmp_path_factory, params) -> Callable[[Path], Path]:
    cache: dict[str, Path] = {}

    def build(shared: Path) -> Path:
        from medrov.data import convert

        if str(shared) not in cache:
            root = tmp_path_factory.mktemp("real_omnis")
            entries = [
                {"name": "BCCD", "root": str(shared / "bccd" / "BCCD"), "split": "imagesets"},
                {
                    "name": "TotalSegmentorCT",
                    "root": str(shared / "totalsegmentator"),
                    "cases": [
                        {"image": "example_ct_sm.nii.gz", "label": "example_seg.nii.gz", "patient": "example_ct_sm"},
                        {
                            "image": "example_ct_dicom",
                            "label": "example_seg_dicom.nii.gz",
                            "patient": "example_ct_dicom",
                        },
                    ],
                },
            ]
            (root / "sources.yaml").write_text(yaml.safe_dump({"sources": entries}, sort_keys=False))
            summary = convert.run(
                params.data, sources_file=root / "sources.yaml", out_dir=root / "omnis", workers=2, progress=False
            )
            assert summary["quarantined"] == 0
            cache[str(shared)] = root / "omnis"
        return cache[str(shared)]

    return build


def test_real_data_passes_then_fails_when_corrupted(shared_data, real_omnis, vparams, tmp_path):
    data = real_omnis(shared_data)
    s = run(data, vparams)
    assert s["success"] is True, validate.summary_lines(s)
    assert set(manifest_of(data)["source"]) == {"BCCD", "TotalSegmentorCT"}

    broken = Path(shutil.copytree(data, tmp_path / "omnis"))
    m = manifest_of(broken)
    bccd = m[(m["source"] == "BCCD") & (m["n_boxes"] > 0)]
    shifted, deleted = bccd.iloc[0], bccd.iloc[1]
    label = broken / shifted["label"]
    lines = label.read_text().splitlines()
    fields = lines[0].split()
    fields[1] = f"{float(fields[1]) + 1.0:.6f}"  # x_center pushed past the right edge
    lines[0] = " ".join(fields)
    label.write_text("\n".join(lines) + "\n")
    (broken / deleted["image"]).unlink()

    s = run(broken, vparams)
    assert s["success"] is False
    fails = [line for line in validate.summary_lines(s) if line.startswith("FAIL")]
    by_check = {line.split(":")[0].removeprefix("FAIL "): line for line in fails}
    assert shifted["label"] in by_check["label_lines.x_center"] and "1 of " in by_check["label_lines.x_center"]
    assert deleted["image"] in by_check["manifest.image_missing"] and "1 of " in by_check["manifest.image_missing"]
    # the edited line is no longer the box the table holds
    assert set(by_check) == {
        "label_lines.x_center",
        "manifest.image_missing",
        "label_lines.missing_from_boxes_table",
        "boxes.missing_from_label_file",
    }, fails
