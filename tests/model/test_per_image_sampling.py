"""The training dataset on a converted mixed collection with per-image presence: every image (and every mosaic
tile) carries its own presence row to the prompt sampler, so a class that an image may hold unlabelled is never one
of its negative prompts, while the same class annotated in another image still is."""

from __future__ import annotations

import random

import numpy as np

from medrov.config import load_params
from medrov.data import convert
from medrov.data.presence import presence_rows
from tests.conftest import ROOT
from tests.data.test_mixed_collection import ABDOMEN, RETINA, SOURCES, _write_collection


def test_mosaic_tiles_carry_each_images_own_row_to_the_prompt_sampler(tmp_path):
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.cfg import get_cfg
    from ultralytics.data.utils import check_det_dataset

    from medrov.model.trainer import OmnisTrainDataset, _omnis_data

    _write_collection(tmp_path / "abdomen", ABDOMEN)
    _write_collection(tmp_path / "retina", RETINA, rgb=True)
    (tmp_path / "sources.yaml").write_text(SOURCES)
    every_image_in_train = ["data.split.train=1.0", "data.split.val=0.0", "data.split.test=0.0"]
    params = load_params(ROOT / "params.yaml", ["data.workers=1", *every_image_in_train])
    out = tmp_path / "omnis"
    convert.run(params.data, tmp_path / "sources.yaml", out, progress=False)

    data = check_det_dataset(str(out / "omnis.yaml"))
    data = _omnis_data(data, data.get("novel", []), track_sources=True, presence_sampling=True)
    dataset = OmnisTrainDataset(
        img_path=data["train"],
        imgsz=64,
        batch_size=4,
        augment=True,
        hyp=get_cfg(overrides={"imgsz": 64}),
        rect=False,
        cache=None,
        single_cls=False,
        stride=32,
        pad=0.0,
        prefix="",
        task="detect",
        classes=None,
        data=data,
        fraction=1.0,
    )
    rows = presence_rows(out, list(data["names"].values()))
    liver = [str(n).split("/")[0] for n in data["names"].values()].index("liver")
    unlabelled_liver = {r for r in range(len(rows.names)) if rows.matrix[r, liver] == 0}
    assert unlabelled_liver  # case_b's own row (kidney and adrenal masks only)

    random.seed(0)
    np.random.seed(0)
    with_unlabelled, liver_as_negative = 0, 0
    for _ in range(6):
        for i in range(len(dataset)):
            item = dataset[i]
            tile_rows = {int(r) for r in np.asarray(item["tiles"]).reshape(-1, 5)[:, 4]}
            positives = {item["texts"][int(c)] for c in np.asarray(item["cls"]).reshape(-1)}
            if tile_rows & unlabelled_liver:
                with_unlabelled += 1
                if "liver" not in positives:  # a liver positive of another tile stays a positive
                    assert "liver" not in item["texts"], (item["im_file"], tile_rows)
            elif "liver" in item["texts"] and "liver" not in positives:
                liver_as_negative += 1
    assert with_unlabelled > 0 and liver_as_negative > 0
