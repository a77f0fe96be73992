"""Per-image presence reaches the prompt sampler, the pseudo-label rule and evaluation: an image annotates exactly
its own classes; the other classes its modality can hold are M=0 there (never a negative prompt, a confident box
becomes a pseudo-label, a prediction is not a false positive), while its M=1 classes stay negatives."""

from __future__ import annotations

import random

import numpy as np
from ultralytics.utils.instance import Instances

from medrov.catalog import VocabClass, Vocabulary
from medrov.data.presence import PresenceRows, image_presence_row
from medrov.model.evaluate import match, scored_classes, summarise
from medrov.model.pseudo import ImageInput, Rule, decide
from medrov.model.trainer import PromptSampler

VOCAB = Vocabulary(
    [
        VocabClass(0, "liver", (), ("ct",), "base"),
        VocabClass(1, "kidney", (), ("ct",), "base"),
        VocabClass(2, "adrenal gland", (), ("ct",), "base"),
        VocabClass(3, "red blood cell", (), ("microscopy",), "base"),
    ]
)
NAMES = VOCAB.names
LIVER, KIDNEY, ADRENAL, RBC = range(4)
# row 0: the source's own row (union of its images); row 1: image A (kidney masks only); row 2: image B
SOURCE_ROW = [1, 1, 1, -1]
ROW_A = [image_presence_row(["kidney"], "ct", VOCAB)[n] for n in NAMES]
ROW_B = [image_presence_row(["liver", "kidney"], "ct", VOCAB)[n] for n in NAMES]
PRESENCE = np.array([SOURCE_ROW, ROW_A, ROW_B])


def test_an_images_row_is_one_for_its_classes_zero_for_its_modality_minus_one_elsewhere():
    assert ROW_A == [0, 1, 0, -1]
    assert ROW_B == [1, 1, 0, -1]


def _labels(positives: list[int], row: int) -> dict:
    n = len(positives)
    boxes = np.array([[10.0 + i, 10.0, 20.0 + i, 20.0] for i in range(n)], dtype=np.float32).reshape(-1, 4)
    return {
        "texts": [[name] for name in NAMES],
        "cls": np.array(positives, dtype=float).reshape(-1, 1),
        "instances": Instances(boxes, np.zeros((n, 0, 2), np.float32), bbox_format="xyxy", normalized=False),
        "tiles": np.array([[0, 0, 80, 80, row]], dtype=np.float32),
    }


def _prompts(row: int, positives: list[int], draws: int = 40) -> set[str]:
    sampler = PromptSampler(
        negatives=range(len(NAMES)), presence=PRESENCE, max_samples=len(NAMES), padding=True, padding_value=NAMES
    )
    random.seed(0)
    seen: set[str] = set()
    for _ in range(draws):
        seen |= set(sampler(_labels(positives, row))["texts"])
    return seen


def test_the_prompt_sampler_reads_the_images_own_row():
    # image A: liver and adrenal may be there unlabelled (M=0 in its row): never negatives
    assert _prompts(row=1, positives=[KIDNEY]) == {"kidney", "red blood cell"}
    # image B annotates liver (M=1): a liver-free crop of it may show liver as a negative prompt
    assert "liver" in _prompts(row=2, positives=[KIDNEY])
    # the source-level row (liver annotated somewhere in the source) would have shown A's liver as a negative
    assert "liver" in _prompts(row=0, positives=[KIDNEY])


def _image(row: int, predicted_slot: int) -> ImageInput:
    return ImageInput(
        boxes=np.array([[10.0, 10.0, 110.0, 110.0]]),
        scores=np.array([0.95]),
        slots=np.array([predicted_slot]),
        gt_boxes=np.array([[300.0, 300.0, 400.0, 400.0]]),
        gt_slots=np.array([KIDNEY]),
        slot_classes=np.arange(len(NAMES)),
        tiles=np.array([[0.0, 0.0, 640.0, 640.0]]),
        tile_sources=np.array([row]),
        size=(640, 640),
    )


def test_the_pseudo_rule_reads_the_images_own_row():
    # a confident liver box away from the ground truth: A's liver is M=0, so it becomes a pseudo-label...
    on_a = decide([_image(1, LIVER)], PRESENCE, Rule())
    assert [(t.cls, t.source) for t in on_a.targets] == [(LIVER, 1)] and on_a.negatives == []
    # ...while in B liver is annotated (M=1): the same box is a false positive, a negative crop
    on_b = decide([_image(2, LIVER)], PRESENCE, Rule())
    assert on_b.targets == [] and [n.cls for n in on_b.negatives] == [LIVER]


def test_evaluation_does_not_score_an_images_m0_classes_as_false_positives():
    rows = PresenceRows(
        names=["Mixed", "Mixed@1", "Mixed@2"],
        sources=["Mixed"] * 3,
        matrix=PRESENCE,
        image_row={},
        image_rel={"a.png": 1, "b.png": 2},
    )
    prompted = [LIVER, KIDNEY, ADRENAL]  # the source annotates all three somewhere
    assert scored_classes(rows, "a.png", prompted) == {KIDNEY}
    assert scored_classes(rows, "b.png", prompted) == {LIVER, KIDNEY}
    assert scored_classes(rows, "uniform.png", prompted) == set(prompted)  # no own row: the source's classes
    box = np.array([[10.0, 10.0, 50.0, 50.0]])
    # B: a liver found exactly. A: an unlabelled liver found with more confidence, plus its kidney
    images = {
        "b.png": (box, np.array([0.6]), np.array([LIVER]), box, np.array([LIVER])),
        "a.png": (
            np.array([[60.0, 60.0, 90.0, 90.0], [10.0, 10.0, 50.0, 50.0]]),
            np.array([0.9, 0.8]),
            np.array([LIVER, KIDNEY]),
            box,
            np.array([KIDNEY]),
        ),
    }

    def evaluate(filtered: bool) -> float:
        stats = []
        for name, (boxes, conf, pred, gt, gt_cls) in images.items():
            if filtered:
                keep = np.isin(pred, sorted(scored_classes(rows, name, prompted)))
                boxes, conf, pred = boxes[keep], conf[keep], pred[keep]
            stats.append({"tp": match(boxes, conf, pred, gt, gt_cls), "conf": conf, "pred": pred, "target": gt_cls})
        return summarise(stats, novel=set())["all"]["map50"]

    assert evaluate(filtered=True) == 1.0
    assert evaluate(filtered=False) < 1.0  # what the source-level row would score: A's liver as a false positive


def test_a_manifest_without_presence_rows_maps_images_to_their_source(tmp_path):
    import pandas as pd

    from medrov.data.presence import presence_rows

    pd.DataFrame({"image": ["images/S/a.png", "images/T/b.png"], "source": ["S", "T"]}).to_parquet(
        tmp_path / "manifest.parquet"
    )
    (tmp_path / "presence.csv").write_text("source,liver,kidney\nT,1,0\nS,0,1\n")
    rows = presence_rows(tmp_path, ["liver", "kidney"])
    assert rows.names == ["T", "S"] and rows.image_rel == {"images/S/a.png": 1, "images/T/b.png": 0}
    assert rows.matrix.tolist() == [[1, 0], [0, 1]]
    assert rows.image_row[str((tmp_path / "images/S/a.png").resolve())] == 1
