"""Presence-aware prompt sampling: a class with M=0 for the source of any tile of an image is never one of its
negative prompts; positives and classes annotated (or impossible) everywhere in the image still are."""

from __future__ import annotations

import random

import numpy as np
import pytest
from ultralytics.utils.instance import Instances

from medrov.model.trainer import PromptSampler

NAMES = ["liver", "spleen", "right kidney", "red blood cell", "platelets", "colon polyp"]
# source 0 (abdominal CT): liver/spleen annotated, kidney may be there unannotated, no blood cells or polyps
# source 1 (blood smear): red cells annotated, platelets may be there unannotated, no organs
PRESENCE = np.array([[1, 1, 0, -1, -1, -1], [-1, -1, -1, 1, 0, -1]])


def _labels(positives: list[int], tile_sources: list[int]) -> dict:
    n = len(positives)
    boxes = np.array([[10.0 + i, 10.0, 20.0 + i, 20.0] for i in range(n)], dtype=np.float32).reshape(-1, 4)
    tiles = np.array([[0, 0, 80, 80, s] for s in tile_sources], dtype=np.float32).reshape(-1, 5)
    return {
        "texts": [[n] for n in NAMES],
        "cls": np.array(positives, dtype=float).reshape(-1, 1),
        "instances": Instances(boxes, np.zeros((n, 0, 2), np.float32), bbox_format="xyxy", normalized=False),
        "tiles": tiles,
    }


def _sample(sampler: PromptSampler, positives: list[int], tile_sources: list[int], draws: int = 40) -> set[str]:
    random.seed(0)
    seen: set[str] = set()
    for _ in range(draws):
        out = sampler(_labels(positives, tile_sources))
        seen |= set(out["texts"])
        # every kept box still points at its own class name
        assert [out["texts"][int(c)] for c in np.asarray(out["cls"]).reshape(-1)] == [NAMES[p] for p in positives]
    return seen


def _sampler(presence):
    return PromptSampler(
        negatives=range(len(NAMES)), presence=presence, max_samples=len(NAMES), padding=True, padding_value=list(NAMES)
    )


def test_unannotated_classes_of_a_tiles_source_are_never_negatives():
    seen = _sample(_sampler(PRESENCE), positives=[0], tile_sources=[0])
    assert "right kidney" not in seen  # M=0 in the CT source
    assert {"liver", "spleen", "red blood cell", "platelets", "colon polyp"} <= seen  # M=1 / M=-1 stay negatives


def test_tiles_from_two_sources_block_the_unannotated_classes_of_both():
    seen = _sample(_sampler(PRESENCE), positives=[0, 3], tile_sources=[0, 1])
    assert not seen & {"right kidney", "platelets"}
    assert {"liver", "red blood cell", "spleen", "colon polyp"} <= seen


def test_a_positive_stays_even_when_another_tiles_source_has_it_unannotated():
    presence = PRESENCE.copy()
    presence[1, 1] = 0  # the smear "may contain" spleen: the CT tile's annotated spleen must still be prompted
    seen = _sample(_sampler(presence), positives=[1], tile_sources=[0, 1])
    assert "spleen" in seen and not seen & {"right kidney", "platelets"}


@pytest.mark.parametrize("presence", [None, PRESENCE])
def test_switch_off_or_no_tiles_samples_every_allowed_class(presence):
    sampler = _sampler(presence)
    tiles = [0] if presence is None else []  # off: tiles are ignored; on but untracked image: nothing to block
    assert _sample(sampler, positives=[0], tile_sources=tiles) == set(NAMES)


def test_padding_never_repeats_a_positive_name():
    """A small pool leaves most slots to padding: those must be negatives, never the image's own class again (a
    second "liver" slot without the liver's boxes would train the liver as background)."""
    sampler = PromptSampler(
        negatives=range(len(NAMES)), presence=PRESENCE, max_samples=12, padding=True, padding_value=list(NAMES)
    )
    random.seed(0)
    for _ in range(40):
        out = sampler(_labels([0], [0]))
        assert len(out["texts"]) == 12 and out["texts"].count("liver") == 1
        assert "right kidney" not in out["texts"]  # nor an M=0 class
        assert set(out["texts"]) - {"liver"} <= {"spleen", "red blood cell", "platelets", "colon polyp"}


def test_padding_falls_back_to_the_positives_when_the_pool_has_nothing_else():
    from medrov.model.trainer import padding_names

    texts = [[n] for n in NAMES]
    assert padding_names(texts, [0, 1], {0}) == ["spleen"]
    assert padding_names(texts, [0], {0}) == ["liver"]
