"""Finding 3: a path read from an annotation file must stay inside the source root (symlinks resolved)."""

from __future__ import annotations

import json
import os


def _outside_image(corpus, name="host.png"):
    return corpus.save_image(corpus.root / "elsewhere" / name, corpus.rgb_image(99))


def _expect_outside(result, good: int, n_bad: int = 1):
    s = result.summary
    rows = result.rows("input")
    assert (s["converted"], s["quarantined"], s["total"]) == (good, n_bad, good + n_bad), s
    assert rows["reason"].str.contains("path outside the source root").sum() == n_bad, rows.to_string()
    assert not result.manifest["input"].str.contains("elsewhere").any()


def test_coco_file_name_absolute_or_dotdot_or_symlink(corpus, data_params):
    src = corpus.coco(n=3)
    host = _outside_image(corpus)
    os.symlink(host, src.root / "images" / "link.png")
    data = json.loads((src.root / "annotations.json").read_text())
    for i, name in enumerate([str(host), "../../elsewhere/host.png", "link.png"]):
        data["images"].append({"id": 10 + i, "file_name": name, "width": 64, "height": 48})
        data["annotations"].append({"id": 100 + i, "image_id": 10 + i, "category_id": 1, "bbox": [10, 8, 14, 12]})
    (src.root / "annotations.json").write_text(json.dumps(data))
    _expect_outside(corpus.run(data_params), good=3, n_bad=3)


def test_voc_filename_outside(corpus, data_params):
    src = corpus.voc(n=3)
    _outside_image(corpus, "host.jpg")
    xml = corpus.voc_xml("../../elsewhere/host.jpg", 64, 48, [("RBC", 11, 9, 24, 20)])
    (src.root / "Annotations" / "evil.xml").write_text(xml)
    _expect_outside(corpus.run(data_params), good=3)


def test_csv_image_outside(corpus, data_params):
    src = corpus.csv(n=3)
    host = _outside_image(corpus)
    with open(src.root / "boxes.csv", "a") as fh:
        fh.write(f"{host},lung nodule,12,10,18,16\n")
    _expect_outside(corpus.run(data_params), good=3)
