"""Finding 1: one bad entry quarantines that entry only; a dropped source keeps its earlier outputs."""

from __future__ import annotations

import os
import shutil

import pandas as pd


def test_bad_voc_entries_quarantine_only_themselves(corpus, data_params):
    src = corpus.voc(n=3)
    ann = src.root / "Annotations"
    os.symlink(ann / "no-such-file.xml", ann / "dangling.xml")
    (ann / "folder.xml").mkdir()
    (ann / "sjis.xml").write_bytes(
        b'<?xml version="1.0" encoding="shift_jis"?>\n<annotation><filename>img_000.jpg</filename></annotation>\n'
    )
    (ann / "klingon.xml").write_bytes(b'<?xml version="1.0" encoding="x-klingon"?>\n<annotation/>\n')
    result = corpus.run(data_params)
    s = result.summary
    assert (s["converted"], s["quarantined"], s["total"]) == (3, 4, 7), s
    reasons = {r.split(": ", 1)[0].rsplit("/", 1)[-1]: r for r in result.rows("input")["reason"]}
    assert "dangling symlink" in reasons["dangling.xml"]
    assert "a folder, not an XML file" in reasons["folder.xml"]
    assert "encoding" in reasons["sjis.xml"] and "encoding" in reasons["klingon.xml"]
    assert sorted(result.manifest["item_id"]) == ["img_000", "img_001", "img_002"]
    assert all((result.out / p).is_file() for p in result.manifest["image"])


def test_dropped_source_keeps_its_earlier_outputs(corpus, data_params):
    coco = corpus.coco(n=3)
    corpus.voc(n=2)
    first = corpus.run(data_params)
    coco_images = sorted(first.manifest.loc[first.manifest["source"] == "TinyCOCO", "image"])
    assert len(coco_images) == 3
    (coco.root / "annotations.json").write_text("{ this is not json")  # the source's root file is now unreadable
    second = corpus.run(data_params)
    s = second.summary
    assert s["converted"] + s["quarantined"] == s["total"], s
    assert s["sources"]["TinyCOCO"]["dropped"] is True and s["sources"]["TinyCOCO"]["kept_from_earlier_run"] == 3, s
    assert s["orphans_removed"] == 0, s
    assert all((second.out / p).is_file() for p in coco_images)
    kept = second.manifest.loc[second.manifest["source"] == "TinyCOCO"]
    assert sorted(kept["image"]) == coco_images
    assert set(kept["split"]) <= {"train", "val", "test"}
    assert len(second.boxes[second.boxes["source"] == "TinyCOCO"]) == 6
    # once the annotation file is repaired the source converts again from its own inputs
    shutil.rmtree(coco.root)
    corpus.built.pop("TinyCOCO")
    corpus.coco(n=3)
    third = corpus.run(data_params)
    assert third.summary["sources"]["TinyCOCO"].get("dropped") is None and third.summary["converted"] == 5
    assert isinstance(third.manifest, pd.DataFrame)
