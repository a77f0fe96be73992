"""The pseudo-label / negative-crop rule on hand-made cases of known answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from medrov.model.pseudo import (
    ImageInput,
    Rule,
    append_targets,
    decide,
    enlarge_box,
    place_probed,
    probe_mask,
    source_of,
)

# two sources x four classes; slots of the image name classes 0..3, slot 4 is padding
PRESENCE = np.array(
    [
        [1, 0, -1, 1],  # source 0: annotates class 0 and 3, may contain class 1 unannotated, cannot contain class 2
        [0, 1, 1, -1],  # source 1
    ]
)
SLOTS = np.array([0, 1, 2, 3, -1])


def image(
    boxes, scores, slots, gt_boxes=(), gt_slots=(), tiles=((0, 0, 640, 640),), tile_sources=(0,), size=(640, 640)
):
    return ImageInput(
        boxes=np.asarray(boxes, dtype=float).reshape(-1, 4),
        scores=np.asarray(scores, dtype=float),
        slots=np.asarray(slots, dtype=int),
        gt_boxes=np.asarray(gt_boxes, dtype=float).reshape(-1, 4),
        gt_slots=np.asarray(gt_slots, dtype=int),
        slot_classes=SLOTS,
        tiles=np.asarray(tiles, dtype=float),
        tile_sources=np.asarray(tile_sources, dtype=int),
        size=size,
    )


def test_unannotated_class_becomes_pseudo_target():
    d = decide([image([[10, 10, 110, 110]], [0.95], [1])], PRESENCE, Rule())
    assert [(t.image, t.slot, t.cls, t.source) for t in d.targets] == [(0, 1, 1, 0)]
    assert d.negatives == []


@pytest.mark.parametrize("cls", [0, 2])  # M = 1 (annotated) and M = -1 (cannot exist)
def test_annotated_or_impossible_class_becomes_negative(cls):
    d = decide(
        [image([[10, 10, 110, 110]], [0.95], [cls], gt_boxes=[[300, 300, 400, 400]], gt_slots=[3])], PRESENCE, Rule()
    )
    assert d.targets == []
    (neg,) = d.negatives
    assert neg.cls == cls and neg.slot not in (3,) and neg.label_slot == neg.slot
    assert neg.crop == (0, 0, 125, 125)  # 100 px grown 30 % around its centre, clipped at the image edge


def test_confidence_edge_is_inclusive():
    boxes = [[10, 10, 110, 110], [300, 300, 400, 400]]
    d = decide([image(boxes, [0.9, 0.8999], [1, 1])], PRESENCE, Rule(conf_c=0.9))
    assert [t.box for t in d.targets] == [(10.0, 10.0, 110.0, 110.0)]


def test_iou_edge_is_exclusive():
    gt = [[0, 0, 100, 100]]
    at_t = image([[0, 0, 100, 30]], [0.95], [1], gt_boxes=gt, gt_slots=[0])  # IoU = 0.30
    below = image([[0, 0, 100, 29]], [0.95], [1], gt_boxes=gt, gt_slots=[0])  # IoU = 0.29
    assert decide([at_t], PRESENCE, Rule(iou_t=0.3)).targets == []
    assert len(decide([below], PRESENCE, Rule(iou_t=0.3)).targets) == 1


def test_class_agnostic_nms_keeps_the_best_box():
    boxes = [[10, 10, 110, 110], [12, 12, 112, 112]]  # IoU ~0.92, different classes
    d = decide([image(boxes, [0.91, 0.97], [1, 3])], PRESENCE, Rule())
    assert d.targets == [] and [n.cls for n in d.negatives] == [3]


@pytest.mark.parametrize("side,kept", [(49, False), (50, True), (320, True), (321, False)])
def test_crop_size_bounds(side, kept):
    d = decide([image([[0, 0, side, side]], [0.95], [0])], PRESENCE, Rule(crop_min=50, crop_max=320))
    assert (len(d.negatives) == 1) is kept


def test_crops_per_image_limit_takes_the_most_confident():
    boxes = [[i * 70, 0, i * 70 + 60, 60] for i in range(7)]
    scores = [0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97]
    d = decide([image(boxes, scores, [0] * 7)], PRESENCE, Rule(crops_per_image=2))
    assert [n.score for n in d.negatives] == [0.97, 0.96]


def test_negative_never_overwrites_positive_or_pseudo_slots():
    rule = Rule(crops_per_image=5)
    boxes = [[0, 0, 60, 60], [100, 0, 160, 60], [200, 0, 260, 60], [300, 0, 360, 60]]
    # slot 1 gets a pseudo target, slot 0 is positive: only slots 2, 3, 4 are free -> three negatives at most
    d = decide(
        [image(boxes, [0.99, 0.98, 0.97, 0.96], [1, 0, 0, 0], gt_boxes=[[500, 500, 600, 600]], gt_slots=[0])],
        PRESENCE,
        rule,
        np.random.default_rng(3),
    )
    assert [t.slot for t in d.targets] == [1]
    assert sorted(n.slot for n in d.negatives) == [2, 3, 4]


def test_slot_or_predicted_class_for_negatives():
    im = image([[10, 10, 110, 110]], [0.95], [3])
    slot = decide([im], PRESENCE, Rule(negative_class="slot"), np.random.default_rng(0)).negatives[0]
    pred = decide([im], PRESENCE, Rule(negative_class="predicted"), np.random.default_rng(0)).negatives[0]
    assert slot.label_slot == slot.slot != 3
    assert pred.label_slot == 3 and pred.slot == slot.slot


def test_mosaic_tiles_from_two_sources_use_their_own_presence_rows():
    tiles = [[0, 0, 320, 320], [320, 0, 640, 320]]
    boxes = [[10, 10, 110, 110], [400, 10, 500, 110]]  # class 1 in each tile
    d = decide([image(boxes, [0.95, 0.95], [1, 1], tiles=tiles, tile_sources=[0, 1])], PRESENCE, Rule())
    assert [(t.source, t.cls) for t in d.targets] == [(0, 1)]  # M[0, 1] = 0: pseudo target
    assert [(n.source, n.cls) for n in d.negatives] == [(1, 1)]  # M[1, 1] = 1: negative


def test_box_across_a_tile_seam_or_padding_slot_is_skipped():
    tiles = [[0, 0, 320, 640], [320, 0, 640, 640]]
    straddling = image([[220, 10, 420, 110]], [0.99], [1], tiles=tiles, tile_sources=[0, 1])
    padding = image([[10, 10, 110, 110]], [0.99], [4])
    assert source_of(np.array([220, 10, 420, 110.0]), np.array(tiles, float), np.array([0, 1])) == -1
    d = decide([straddling, padding], PRESENCE, Rule())
    assert d.targets == [] and d.negatives == []


def test_switches_turn_each_mechanism_off():
    im = image([[10, 10, 110, 110], [300, 300, 400, 400]], [0.95, 0.95], [1, 0])
    only_labels = decide([im], PRESENCE, Rule(negatives=False))
    only_negatives = decide([im], PRESENCE, Rule(labels=False))
    assert len(only_labels.targets) == 1 and only_labels.negatives == []
    assert only_negatives.targets == [] and len(only_negatives.negatives) == 1


def test_appended_targets_are_resorted_by_image():
    batch_idx = torch.tensor([0.0, 1.0, 1.0, 2.0])
    cls = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    bboxes = torch.full((4, 4), 0.5)
    new = [(2, 4, (0.0, 0.0, 64.0, 32.0)), (0, 1, (32.0, 32.0, 64.0, 64.0))]
    bi, c, b = append_targets(batch_idx, cls, bboxes, new, (64, 64))
    assert bi.tolist() == [0, 0, 1, 1, 2, 2]
    assert c.reshape(-1).tolist() == [0, 1, 1, 2, 3, 4]
    assert torch.allclose(b[1], torch.tensor([0.75, 0.75, 0.5, 0.5]))
    assert torch.allclose(b[5], torch.tensor([0.5, 0.25, 1.0, 0.5]))


def test_enlarged_crop_is_clipped_to_the_image():
    assert enlarge_box(np.array([0, 0, 100, 100.0]), 0.3, (640, 640)) == (0, 0, 115, 115)
    assert enlarge_box(np.array([600, 600, 640, 640.0]), 0.3, (640, 640)) == (594, 594, 640, 640)


def test_rule_defaults_are_the_params_defaults_and_read_from_a_section_or_its_dict():
    from medrov.config import PseudoParams

    section = PseudoParams(iou_t=0.25, negatives=True)
    assert Rule() == Rule.from_params(PseudoParams())
    assert Rule.from_params(section) == Rule.from_params(section.model_dump()) != Rule()
    assert Rule.from_params(section).iou_t == 0.25
    assert Rule.from_params(section, negatives_available=False).negatives is False


def test_a_class_of_its_own_c_passes_below_the_global_c_and_others_do_not():
    from medrov.config import PseudoParams
    from medrov.errors import ConfigError

    ids = {"liver": 1, "hepar": 1, "spleen": 0}
    rule = Rule.from_params(PseudoParams(conf_c=0.9, conf_c_class={"hepar": 0.3}), class_ids=ids)
    assert rule.conf_c_class == ((1, 0.3),) and rule.min_conf == 0.3  # a synonym names its class
    assert rule.thresholds(np.array([1, 0, -1])).tolist() == [0.3, 0.9, 0.9]
    # source 0: a class-1 box (M=0) and a class-0 box (M=1) at 0.5: class 1 passes at its C 0.3 and becomes a
    # target; class 0 keeps C 0.9, so it is no candidate at all (it would otherwise be a negative crop)
    far = [[10, 10, 110, 110], [300, 300, 400, 400]]
    d = decide([image(far, [0.5, 0.5], [1, 0])], PRESENCE, rule)
    assert [(t.cls, round(t.score, 2)) for t in d.targets] == [(1, 0.5)] and d.negatives == []
    assert len(decide([image(far, [0.5, 0.5], [1, 0])], PRESENCE, dataclasses.replace(rule, conf_c=0.4)).negatives) == 1
    assert decide([image(far, [0.5, 0.5], [1, 0])], PRESENCE, Rule(conf_c=0.9)).targets == []  # without it: none
    with pytest.raises(ConfigError, match=r"\['kidny'\] are not classes"):
        Rule.from_params(PseudoParams(conf_c_class={"kidny": 0.3}), class_ids=ids)
    with pytest.raises(ValueError, match="must lie in"):
        PseudoParams(conf_c_class={"liver": 1.5})


# --- probes: classes the image's prompts leave out, scored by the teacher after its K training prompts ----------
def probed_image(boxes, scores, slots, gt_boxes=(), gt_slots=(), tile_sources=(0,), tiles=((0, 0, 640, 640),)):
    """Training prompts name classes 0, 3, 2 (slots 0-2); slot 3 probes class 1 (M=0 for source 0)."""
    im = image(boxes, scores, slots, gt_boxes, gt_slots, tiles=tiles, tile_sources=tile_sources)
    return dataclasses.replace(im, slot_classes=np.array([0, 3, 2, 1]), prompt_slots=3)


def test_a_probed_class_becomes_a_target_in_a_free_training_slot():
    im = probed_image([[10, 10, 110, 110]], [0.95], [3], gt_boxes=[[300, 300, 400, 400]], gt_slots=[0])
    d = decide([im], PRESENCE, Rule())
    assert [(t.slot, t.cls) for t in d.targets] == [(3, 1)]  # decided in the probe slot
    placed_d, placed = place_probed(d, [im], np.random.default_rng(0))
    ((image_index, slot, cls),) = placed
    assert image_index == 0 and cls == 1 and slot in (1, 2)  # never the positive slot 0, never a probe slot
    assert [(t.slot, t.cls, t.box) for t in placed_d.targets] == [(slot, 1, (10.0, 10.0, 110.0, 110.0))]


def test_a_probe_never_makes_a_negative_and_negatives_never_take_a_probe_slot():
    # box 1: probe of class 1 inside a tile of source 1 (M=1 there): ignored, not a negative;
    # box 2: class 2 in source 0 (M=-1): a negative, which must land in a training slot (< 3)
    im = probed_image(
        [[10, 10, 110, 110], [400, 400, 500, 500]],
        [0.95, 0.95],
        [3, 2],
        tiles=((0, 0, 320, 640), (320, 0, 640, 640)),
        tile_sources=(1, 0),
    )
    d = decide([im], PRESENCE, Rule())
    assert d.targets == []
    (neg,) = d.negatives
    assert neg.cls == 2 and neg.slot < 3 and neg.label_slot < 3


def test_probed_classes_share_a_slot_per_class_and_are_dropped_when_no_slot_is_free():
    boxes = [[10, 10, 110, 110], [200, 200, 300, 300]]
    im = probed_image(boxes, [0.95, 0.94], [3, 3], gt_boxes=[[500, 500, 600, 600]], gt_slots=[0])
    d, placed = place_probed(decide([im], PRESENCE, Rule()), [im])
    assert len(placed) == 1 and len(d.targets) == 2 and len({t.slot for t in d.targets}) == 1
    # every training slot positive: nowhere to put the probed class, so its targets go
    full = probed_image(boxes, [0.95, 0.94], [3, 3], gt_boxes=[[500, 500, 600, 600]] * 3, gt_slots=[0, 1, 2])
    d, placed = place_probed(decide([full], PRESENCE, Rule()), [full])
    assert placed == [] and d.targets == []


def test_without_probes_placement_changes_nothing():
    im = image([[10, 10, 110, 110]], [0.95], [1])
    d = decide([im], PRESENCE, Rule())
    assert place_probed(d, [im]) == (d, [])


def test_a_row_probes_only_unannotated_classes_its_modality_was_taught():
    presence = np.array(
        [
            [1, 0, 0, 0],  # CT A: liver annotated; kidney, lung mass, polyp may be there
            [0, 1, 0, -1],  # CT B: kidney annotated
            [-1, -1, 1, -1],  # X-ray: lung mass annotated
        ]
    )
    mask = probe_mask(presence, ["ct", "ct", "xray"])
    # CT A probes the kidney (CT B taught it) but not the lung mass (taught on X-rays only) nor the polyp (nowhere)
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False], [False, False, False, False]]
