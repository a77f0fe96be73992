"""MedROV's training rule as a pure function: teacher predictions + ground truth + presence matrix -> pseudo
targets and negative crops.

For every confident prediction (``score >= C``, after class-agnostic NMS) whose IoU with every ground-truth box of
its image is below ``T``, the source ``d`` of the image region it lies in and its predicted class ``c`` decide:

- ``M[d, c] == 0`` (the class may be present but the source does not annotate it): the box becomes a pseudo
  ground-truth box of ``c``, so an unannotated object is not punished as background;
- ``M[d, c] in {1, -1}`` (it would have been annotated, or cannot exist there): a false positive. If its sides are
  within the crop bounds, the box (enlarged) is cropped, its image embedding overwrites a random non-positive prompt
  slot of the image and the box is appended as a target of that slot (``negative_class="slot"``) or of the
  predicted slot (``"predicted"``, what the reference code does).

**Probes.** The teacher may also score *probe* slots: classes with M=0 in the image's presence rows that its prompts
leave out (presence-aware sampling never prompts them, so without probes it could never pseudo-label them), among
those a source of the same modality annotates (:func:`probe_mask`: the teacher has seen them on such images). A probe
slot sits after the image's ``prompt_slots`` training prompts; its predictions can only become pseudo targets (a
probed class is M=0 somewhere in the image; elsewhere its boxes are ignored, never negatives), and
:func:`place_probed` then gives each probed class with a target one of the image's negative prompt slots.

Inputs are per image and in the pixel frame of the training image; prompt slots index the per-image prompt list
(``batch["texts"]``), global class ids index the vocabulary and the presence matrix. Nothing here touches a model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou, nms

from medrov.config import PseudoParams
from medrov.errors import ConfigError

UNKNOWN_SOURCE = -1
_DEFAULTS = PseudoParams()


@dataclass(frozen=True)
class Rule:
    """The constants of the rule: the ``pseudo`` section of params.yaml, whose defaults (config.PseudoParams) are
    the only ones."""

    iou_t: float = _DEFAULTS.iou_t
    conf_c: float = _DEFAULTS.conf_c
    nms_iou: float = _DEFAULTS.nms_iou
    crop_min: int = _DEFAULTS.crop_min
    crop_max: int = _DEFAULTS.crop_max
    crops_per_image: int = _DEFAULTS.crops_per_image
    enlarge: float = _DEFAULTS.enlarge
    negative_class: Literal["slot", "predicted"] = _DEFAULTS.negative_class
    labels: bool = _DEFAULTS.labels
    negatives: bool = _DEFAULTS.negatives
    conf_c_class: tuple[tuple[int, float], ...] = ()  # (class id, C) pairs overriding conf_c for those classes

    @classmethod
    def from_params(
        cls,
        p: PseudoParams | Mapping[str, Any],
        negatives_available: bool = True,
        class_ids: Mapping[str, int] | None = None,
    ) -> "Rule":
        """From a ``PseudoParams`` section or its dict (the trainer carries it as a dict through DDP);
        ``negatives_available`` is False for a text-only encoder; ``class_ids`` (name or synonym -> class id)
        resolves ``conf_c_class``.

        Raises:
            ConfigError: ``conf_c_class`` names a class ``class_ids`` does not know (or none is given).
        """
        get = p.get if isinstance(p, Mapping) else lambda key: getattr(p, key)
        values = {f.name: get(f.name) for f in dataclasses.fields(cls) if f.name != "conf_c_class"}
        values["negatives"] = bool(values["negatives"]) and negatives_available
        by_name = dict(get("conf_c_class") or {})
        unknown = sorted(n for n in by_name if n not in (class_ids or {}))
        if unknown:
            raise ConfigError(f"pseudo.conf_c_class: {unknown} are not classes of the training data")
        values["conf_c_class"] = tuple(sorted((int(class_ids[n]), float(c)) for n, c in by_name.items()))
        return cls(**values)

    @property
    def min_conf(self) -> float:
        """The lowest C of any class: no prediction below it can pass."""
        return min([self.conf_c, *(c for _, c in self.conf_c_class)])

    def thresholds(self, classes: np.ndarray) -> np.ndarray:
        """C of each prediction's class (``conf_c`` unless ``conf_c_class`` names it; -1 = no class)."""
        classes = np.asarray(classes, dtype=int).reshape(-1)
        out = np.full(classes.shape, self.conf_c, dtype=np.float64)
        for cls_id, c in self.conf_c_class:
            out[classes == cls_id] = c
        return out


@dataclass
class ImageInput:
    """One training image as the rule sees it.

    Attributes:
        boxes: (n, 4) predicted boxes, xyxy pixels.
        scores: (n,) confidences.
        slots: (n,) predicted prompt slot of each box.
        gt_boxes: (m, 4) ground-truth boxes, xyxy pixels.
        gt_slots: (m,) prompt slot of each ground-truth box (the positive slots).
        slot_classes: (K,) global class id of each prompt slot, -1 for padding.
        tiles: (t, 4) xyxy pixel regions that come from one source image (one per mosaic tile; the whole image
            when there was no mosaic).
        tile_sources: (t,) source index of each tile (row of the presence matrix).
        size: (height, width) of the training image.
        prompt_slots: how many of the slots are the image's training prompts; the slots from there on are probes
            (see the module docstring). None: every slot is a training prompt.
    """

    boxes: np.ndarray
    scores: np.ndarray
    slots: np.ndarray
    gt_boxes: np.ndarray
    gt_slots: np.ndarray
    slot_classes: np.ndarray
    tiles: np.ndarray
    tile_sources: np.ndarray
    size: tuple[int, int]
    prompt_slots: int | None = None


@dataclass(frozen=True)
class PseudoTarget:
    image: int
    slot: int
    cls: int
    source: int
    box: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class NegativeCrop:
    """A confident false positive: ``crop`` is encoded and overwrites prompt ``slot``; the box is appended as a
    target of ``label_slot``."""

    image: int
    slot: int
    label_slot: int
    cls: int
    source: int
    box: tuple[float, float, float, float]
    crop: tuple[int, int, int, int]
    score: float


@dataclass
class Decisions:
    targets: list[PseudoTarget] = field(default_factory=list)
    negatives: list[NegativeCrop] = field(default_factory=list)

    def appended(self) -> list[tuple[int, int, tuple[float, float, float, float]]]:
        """(image, slot, box) of every box to append to the ground truth, pseudo targets first."""
        return [(t.image, t.slot, t.box) for t in self.targets] + [
            (n.image, n.label_slot, n.box) for n in self.negatives
        ]


def _as2d(a, cols: int) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).reshape(-1, cols)


def candidates(boxes, scores, slots, rule: Rule, slot_classes=None) -> np.ndarray:
    """Indices of predictions with ``score >= C`` (C of the class of their slot, ``slot_classes``, where
    ``rule.conf_c_class`` names it) that survive class-agnostic NMS, best first."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    threshold: float | np.ndarray = rule.conf_c
    if rule.conf_c_class and slot_classes is not None:
        slots = np.asarray(slots, dtype=int).reshape(-1)
        table = np.asarray(slot_classes, dtype=int).reshape(-1)
        inside = (slots >= 0) & (slots < table.size)
        classes = np.full(slots.shape, -1, dtype=int)
        classes[inside] = table[slots[inside]]
        threshold = rule.thresholds(classes)
    keep = np.flatnonzero(scores >= threshold)
    if keep.size == 0:
        return keep
    b = torch.as_tensor(_as2d(boxes, 4)[keep], dtype=torch.float32)
    s = torch.as_tensor(scores[keep], dtype=torch.float32)
    kept = nms(b, s, rule.nms_iou).numpy()
    return keep[kept]


def source_of(box: np.ndarray, tiles: np.ndarray, tile_sources: np.ndarray) -> int:
    """The source of the tile holding more than half of ``box``; otherwise unknown (it straddles a seam)."""
    tiles = _as2d(tiles, 4)
    if tiles.shape[0] == 0:
        return UNKNOWN_SOURCE
    ix = np.clip(np.minimum(box[2], tiles[:, 2]) - np.maximum(box[0], tiles[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], tiles[:, 3]) - np.maximum(box[1], tiles[:, 1]), 0, None)
    inter = ix * iy
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    best = int(np.argmax(inter))
    return int(np.asarray(tile_sources).reshape(-1)[best]) if inter[best] > 0.5 * area else UNKNOWN_SOURCE


def enlarge_box(box: np.ndarray, factor: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` grown by ``factor`` of its width/height around its centre, clipped to the image, integer pixels."""
    h, w = size
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    bw, bh = (box[2] - box[0]) * (1 + factor), (box[3] - box[1]) * (1 + factor)
    x1, y1 = int(np.floor(max(cx - bw / 2, 0))), int(np.floor(max(cy - bh / 2, 0)))
    x2, y2 = int(np.ceil(min(cx + bw / 2, w))), int(np.ceil(min(cy + bh / 2, h)))
    return x1, y1, x2, y2


def decide_image(index: int, im: ImageInput, presence: np.ndarray, rule: Rule, rng: np.random.Generator) -> Decisions:
    """Apply the rule to one image (see the module docstring)."""
    out = Decisions()
    if not (rule.labels or rule.negatives):
        return out
    boxes = _as2d(im.boxes, 4)
    scores = np.asarray(im.scores, dtype=np.float64).reshape(-1)
    slots = np.asarray(im.slots, dtype=int).reshape(-1)
    slot_classes = np.asarray(im.slot_classes, dtype=int).reshape(-1)
    gt = _as2d(im.gt_boxes, 4)
    k = slot_classes.size if im.prompt_slots is None else int(im.prompt_slots)
    order = candidates(boxes, scores, slots, rule, slot_classes)
    if order.size and gt.shape[0]:
        ious = box_iou(torch.as_tensor(boxes[order]), torch.as_tensor(gt)).numpy().max(axis=1)
        order = order[ious < rule.iou_t]
    negative_pool = []
    for i in order:
        slot = int(slots[i])
        cls = int(slot_classes[slot]) if 0 <= slot < slot_classes.size else -1
        if cls < 0:
            continue  # a padding prompt names no class
        source = source_of(boxes[i], im.tiles, im.tile_sources)
        if source == UNKNOWN_SOURCE:
            continue
        m = int(presence[source, cls])
        box = tuple(float(v) for v in boxes[i])
        if slot >= k and m != 0:
            continue  # a probe names a class unannotated elsewhere in the image: here it is neither label nor negative
        if m == 0:
            if rule.labels:
                out.targets.append(PseudoTarget(index, slot, cls, source, box, float(scores[i])))
        elif rule.negatives:
            negative_pool.append((i, slot, cls, source, box))
    if not negative_pool or rule.crops_per_image == 0:
        return out
    positive = set(np.asarray(im.gt_slots, dtype=int).reshape(-1).tolist())
    # padding prompts repeat class names: a slot naming a positive class is positive too
    positive_classes = {int(slot_classes[j]) for j in positive if 0 <= j < slot_classes.size} - {-1}
    taken = positive | {t.slot for t in out.targets} | {j for j in range(k) if slot_classes[j] in positive_classes}
    for i, slot, cls, source, box in negative_pool:
        if len(out.negatives) >= rule.crops_per_image:
            break
        w, h = box[2] - box[0], box[3] - box[1]
        if not (rule.crop_min <= w <= rule.crop_max and rule.crop_min <= h <= rule.crop_max):
            continue
        free = [j for j in range(k) if j not in taken]
        if not free:
            break
        target_slot = int(rng.choice(free))
        taken.add(target_slot)
        label_slot = target_slot if rule.negative_class == "slot" else slot
        crop = enlarge_box(boxes[i], rule.enlarge, im.size)
        out.negatives.append(NegativeCrop(index, target_slot, label_slot, cls, source, box, crop, float(scores[i])))
    return out


def decide(
    images: Sequence[ImageInput], presence: np.ndarray, rule: Rule, rng: np.random.Generator | None = None
) -> Decisions:
    """Apply the rule to a batch of images.

    Args:
        images: one :class:`ImageInput` per training image, in batch order.
        presence: (sources, classes) matrix with values 1, 0, -1.
        rule: thresholds and switches.
        rng: draws the overwritten prompt slot of each negative (seeded for reproducible runs).

    Returns:
        The pseudo targets and negative crops of the whole batch.
    """
    rng = rng or np.random.default_rng(0)
    presence = np.asarray(presence, dtype=int)
    out = Decisions()
    for index, im in enumerate(images):
        d = decide_image(index, im, presence, rule, rng)
        out.targets += d.targets
        out.negatives += d.negatives
    return out


def probe_mask(presence: np.ndarray, row_modalities: Sequence[str]) -> np.ndarray:
    """(rows, classes) bool: the classes a presence row may probe: M=0 there, and annotated (M=1) by some row of the
    same modality, so that the teacher was taught the class on images like these. A class the teacher only saw in
    another modality (an X-ray lung mass, probed on an abdominal CT) would be a guess, not a label.
    """
    presence = np.asarray(presence, dtype=int)
    modalities = np.asarray(list(row_modalities), dtype=object)
    taught = {m: (presence[modalities == m] == 1).any(axis=0) for m in set(modalities.tolist())}
    mask = np.zeros(presence.shape, dtype=bool)
    for r, m in enumerate(modalities):
        mask[r] = (presence[r] == 0) & taught[m]
    return mask


def place_probed(
    decisions: Decisions, images: Sequence[ImageInput], rng: np.random.Generator | None = None
) -> tuple[Decisions, list[tuple[int, int, int]]]:
    """Give every probed class with a pseudo target a training prompt slot of its image.

    A probe slot is not a prompt the training forward sees, so each class whose targets came from one takes a slot
    of the image that holds no positive, no positive class's padding, no pseudo target and no negative crop; its
    targets move there. When no slot is free, that class's targets of the image are dropped.

    Args:
        decisions: the rule's output on ``images`` (:func:`decide`).
        images: the same images; their ``prompt_slots`` tell probes from training prompts.
        rng: draws the slot each probed class takes.

    Returns:
        The decisions with every target in a training slot, and ``(image, slot, class)`` of each slot to overwrite
        with that class's prompt.
    """
    rng = rng or np.random.default_rng(0)
    placed: list[tuple[int, int, int]] = []
    moved: dict[tuple[int, int], int | None] = {}  # (image, probe slot) -> training slot (None: dropped)
    for index, im in enumerate(images):
        if im.prompt_slots is None:
            continue
        k = int(im.prompt_slots)
        probed = sorted({t.slot for t in decisions.targets if t.image == index and t.slot >= k})
        if not probed:
            continue
        slot_classes = np.asarray(im.slot_classes, dtype=int).reshape(-1)
        positive = {int(j) for j in np.asarray(im.gt_slots, dtype=int).reshape(-1)}
        positive_classes = {int(slot_classes[j]) for j in positive if 0 <= j < slot_classes.size} - {-1}
        taken = (
            positive
            | {j for j in range(k) if slot_classes[j] in positive_classes}
            | {t.slot for t in decisions.targets if t.image == index and t.slot < k}
            | {s for n in decisions.negatives if n.image == index for s in (n.slot, n.label_slot)}
        )
        for probe in probed:
            free = [j for j in range(k) if j not in taken]
            slot = int(rng.choice(free)) if free else None
            moved[(index, probe)] = slot
            if slot is not None:
                taken.add(slot)
                placed.append((index, slot, int(slot_classes[probe])))
    if not moved:
        return decisions, placed
    targets = []
    for t in decisions.targets:
        slot = moved.get((t.image, t.slot), t.slot)
        if slot is not None:
            targets.append(dataclasses.replace(t, slot=slot))
    return Decisions(targets=targets, negatives=list(decisions.negatives)), placed


def append_targets(
    batch_idx: torch.Tensor,
    cls: torch.Tensor,
    bboxes: torch.Tensor,
    new: Sequence[tuple[int, int, tuple[float, float, float, float]]],
    size: tuple[int, int],
):
    """Ground truth plus ``new`` (image, slot, xyxy pixel box), re-sorted by image.

    ultralytics' targets are ``batch_idx`` (N,), ``cls`` (N, 1) and normalised xywh ``bboxes`` (N, 4); its v8 loss
    assumes rows grouped by image, so appended rows are merged back in with a stable sort.
    """
    if not new:
        return batch_idx, cls, bboxes
    h, w = size
    rows = torch.tensor([[x1, y1, x2, y2] for _, _, (x1, y1, x2, y2) in new], dtype=bboxes.dtype, device=bboxes.device)
    xywh = torch.stack(
        (
            (rows[:, 0] + rows[:, 2]) / 2 / w,
            (rows[:, 1] + rows[:, 3]) / 2 / h,
            (rows[:, 2] - rows[:, 0]) / w,
            (rows[:, 3] - rows[:, 1]) / h,
        ),
        1,
    )
    idx = torch.tensor([i for i, _, _ in new], dtype=batch_idx.dtype, device=batch_idx.device)
    slots = torch.tensor([[s] for _, s, _ in new], dtype=cls.dtype, device=cls.device)
    batch_idx, cls, bboxes = torch.cat((batch_idx, idx)), torch.cat((cls, slots)), torch.cat((bboxes, xywh))
    order = torch.sort(batch_idx, stable=True).indices
    return batch_idx[order], cls[order], bboxes[order]
