"""``evaluate`` on a mixed collection with per-image presence and user classes (an untrained detector at conf 0, so
every prompted class gets predictions): an image is only scored on the classes its own row annotates, and the user
modality and novel user class are reported."""

from __future__ import annotations

import json

import torch

from medrov.config import load_params
from medrov.data import convert
from tests.conftest import ROOT
from tests.data.test_mixed_collection import ABDOMEN, RETINA, SOURCES, _write_collection


def test_evaluation_scores_each_image_on_its_own_row(tmp_path):
    from medrov.model.build import build_world
    from medrov.model.evaluate import evaluate

    _write_collection(tmp_path / "abdomen", ABDOMEN)
    _write_collection(tmp_path / "retina", RETINA, rgb=True)
    (tmp_path / "sources.yaml").write_text(SOURCES)
    every_image_in_train = ["data.split.train=1.0", "data.split.val=0.0", "data.split.test=0.0"]
    data = load_params(ROOT / "params.yaml", ["data.workers=1", *every_image_in_train]).data
    convert.run(data, tmp_path / "sources.yaml", tmp_path / "omnis", progress=False)
    weights = tmp_path / "tiny.pt"
    torch.save({"model": build_world("n"), "train_args": {"imgsz": 64}}, weights)
    params = load_params(
        ROOT / "params.yaml",
        [
            f"train.data={tmp_path / 'omnis' / 'omnis.yaml'}",
            "text.encoder=minilm",
            f"text.cache_dir={tmp_path / 'text-cache'}",
            "evaluate.metrics=null",
            "evaluate.plots=null",
            "evaluate.conf=0.0",
        ],
    )
    result = evaluate(weights, params, split="train", coco_dir=tmp_path / "coco")
    # the user classes went through the encoder and its on-disk cache like catalogue classes
    cached = {t for f in (tmp_path / "text-cache").glob("text-*.pt") for t in torch.load(f, weights_only=True)["texts"]}
    assert {"adrenal gland", "retinal fluid", "optic cup"} <= cached
    assert result["images"] == 5 and set(result["modality"]) == {"ct", "oct"}
    assert "novel" in result and result["novel"]["classes"] == 1  # retinal fluid, a user class held out
    gt = json.loads((tmp_path / "coco" / "coco_gt.json").read_text())
    dt = json.loads((tmp_path / "coco" / "coco_dt.json").read_text())
    names = {c["id"]: c["name"].split("/")[0] for c in gt["categories"]}
    files = {i["id"]: i["file_name"].rsplit("__", 1)[-1].removesuffix(".png") for i in gt["images"]}
    predicted: dict[str, set[str]] = {}
    for d in dt:
        predicted.setdefault(files[d["image_id"]], set()).add(names[d["category_id"]])
    # the source prompts liver, kidney and adrenal gland (its union), yet each image keeps only the predictions of
    # the classes it has masks for: case_b's liver may be there unlabelled and is not a false positive
    own = {**ABDOMEN, **RETINA}
    token = {"adrenal": "adrenal gland", "fluid": "retinal fluid", "cup": "optic cup"}
    assert dt and predicted
    for stem, classes in predicted.items():
        assert classes <= {token.get(t, t) for t in own[stem]}, (stem, classes)
