"""The trainer side of MedROV's training mechanisms: teacher pass, the pure rule (:mod:`medrov.model.pseudo`),
image-feature negatives, per-epoch counters and the audit gallery.

Called from ``MedrovWorldTrainer.preprocess_batch``, i.e. after the batch is on the device with its per-image
prompt embeddings and right before ``loss = model(batch)``: negatives overwrite prompt slots of ``txt_feats`` and
every decided box is appended to the batch targets, so the training forward sees both.
"""

from __future__ import annotations

import csv
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrov.data.presence import presence_rows
from medrov.model.pseudo import Decisions, ImageInput, Rule, append_targets, decide, place_probed, probe_mask
from medrov.prompts import SYNONYM_SEPARATOR, prompt_name

log = logging.getLogger(__name__)
THUMB = 64


class _PendingTargets:
    """The model's loss criterion, plus the boxes the head hook decided in this forward (teacher "student"); the
    batch is copied, not changed, because DDP hands the model its own copy of the batch dict anyway."""

    def __init__(self, criterion, mechanisms: "Mechanisms"):
        self.criterion, self.mechanisms = criterion, mechanisms

    def __call__(self, preds, batch):
        new, self.mechanisms._append = getattr(self.mechanisms, "_append", None), None
        if new:
            batch = dict(batch)
            h, w = batch["img"].shape[2:]
            batch["batch_idx"], batch["cls"], batch["bboxes"] = append_targets(
                batch["batch_idx"], batch["cls"], batch["bboxes"], new, (h, w)
            )
        return self.criterion(preds, batch)

    def __getattr__(self, name):
        if name in ("criterion", "mechanisms"):  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.criterion, name)


@dataclass
class Probe:
    """Probe slots of one batch: ``classes`` (P global ids, M=0 in some image's rows and not among its prompts),
    their prompt embeddings ``feats`` (P, D) and ``mask`` (B, P): which probes apply to which image."""

    classes: list[int]
    feats: torch.Tensor
    mask: torch.Tensor


def _xywh2xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat((b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2), -1)


class Mechanisms:
    """Pseudo-labels and image-feature negatives for one training run (one per rank).

    Args:
        settings: the ``pseudo`` params section as a dict.
        data: the ultralytics data dict (``path``, ``names``).
        encoder: the run's encoder; negatives need ``encoder.has_image``.
        held_out: novel class ids: never probed (nothing may teach them).
    """

    def __init__(self, settings: dict[str, Any], data: dict[str, Any], encoder, held_out=()):

        self.settings = settings
        self.encoder = encoder
        self.negatives_available = bool(getattr(encoder, "has_image", False))
        rows = presence_rows(data["path"], list(data["names"].values()))
        # rows are sources, then per-image rows (``source@k``): the rule reads the row, counters name the source
        self.presence, self.sources = rows.matrix, rows.sources
        self.names = [str(n) for n in data["names"].values()]
        self.text_class = {}
        for c, name in enumerate(self.names):
            for syn in name.split(SYNONYM_SEPARATOR):  # unstripped too: ultralytics' RandomLoadText splits as is
                self.text_class.setdefault(syn, c)
                self.text_class.setdefault(syn.strip(), c)
        self.rule = Rule.from_params(settings, self.negatives_available, self.text_class)
        self.rng = np.random.default_rng(int(settings.get("seed", 0)))
        self.start_epoch = int(settings.get("start_epoch", 0))
        self.teacher = settings.get("teacher", "ema")
        self.held_out = {int(c) for c in held_out}
        # the student decides from the training forward's own prompts: there is no teacher pass to add probes to
        self.probe = bool(settings.get("probe", True)) and self.rule.labels and self.teacher != "student"
        self.probe_mask = self._probe_mask(data["path"]) if self.probe else None
        self.gallery_size = int(settings.get("gallery", 0))
        self.reset()
        if settings.get("negatives") and not self.negatives_available:
            log.warning(
                "pseudo: image-feature negatives are OFF: encoder %s has no image tower (text-only)",
                getattr(encoder, "spec", encoder),
            )

    def describe(self) -> dict[str, Any]:
        """What is in force, for the run record and MLflow params."""
        return {
            "labels": self.rule.labels,
            "negatives": self.rule.negatives,
            "negatives_off_reason": None
            if self.rule.negatives or not self.settings.get("negatives")
            else "encoder has no image tower",
            "teacher": self.teacher,
            "probe": self.probe,
            "probe_off_reason": "teacher student has no teacher pass"
            if self.settings.get("probe", True) and self.rule.labels and not self.probe
            else None,
            "sources": list(dict.fromkeys(self.sources)),
        }

    def reset(self) -> None:
        self.labels = Counter()
        self.probed = Counter()  # pseudo-labels whose class was only a probe (not among the image's prompts)
        self.probe_dropped = 0  # probed classes with targets but no free prompt slot
        self.negatives = Counter()
        self.gallery: dict[int, list[np.ndarray]] = defaultdict(list)
        self.seconds = 0.0
        self.batches = 0

    # --- the per-batch hook -------------------------------------------------------------------------------------
    def __call__(self, trainer, batch: dict[str, Any]) -> Decisions | None:
        self._pending = None
        if trainer.epoch < self.start_epoch or not (self.rule.labels or self.rule.negatives):
            return None
        if self.teacher == "student":  # decided inside the training forward itself (see _on_head)
            self._attach(trainer)
            self._pending = batch
            return None
        start = time.perf_counter()
        probe = self._probe(trainer, batch) if self.probe else None
        images = self._inputs(batch, self._teacher_predictions(trainer, batch, probe), probe)
        decisions = decide(images, self.presence, self.rule, self.rng)
        if probe is not None:
            decisions = self._place_probed(trainer, batch, images, decisions)
        if decisions.negatives:
            self._inject_negatives(batch, decisions)
        if decisions.targets or decisions.negatives:
            h, w = batch["img"].shape[2:]
            batch["batch_idx"], batch["cls"], batch["bboxes"] = append_targets(
                batch["batch_idx"], batch["cls"], batch["bboxes"], decisions.appended(), (h, w)
            )
        self._count(batch, decisions)
        self.seconds += time.perf_counter() - start
        self.batches += 1
        return decisions

    # --- probes: the teacher also scores the M=0 classes an image's prompts leave out ---------------------------
    def _probe_mask(self, path) -> np.ndarray:
        """(rows, classes): what each presence row may probe (:func:`medrov.model.pseudo.probe_mask`)."""
        import pandas as pd

        manifest = pd.read_parquet(Path(path) / "manifest.parquet", columns=["source", "modality"])
        modality = dict(manifest.drop_duplicates("source").itertuples(index=False, name=None))
        mask = probe_mask(self.presence, [modality.get(s, "") for s in self.sources])
        if self.held_out:
            mask[:, sorted(self.held_out)] = False
        return mask

    def _embedding(self, trainer, cls: int) -> torch.Tensor:
        """The prompt embedding of class ``cls`` as the batches carry it (the trainer's text embeddings)."""
        for text in [prompt_name(self.names[cls])] + self.names[cls].split(SYNONYM_SEPARATOR):
            if text.strip() in trainer.text_embeddings:
                return trainer.text_embeddings[text.strip()]
        raise KeyError(f"pseudo: no text embedding for class {self.names[cls]!r}")

    def _rows(self, batch, b: int) -> list[int]:
        tiles = batch.get("tiles") or []
        t = np.asarray(tiles[b] if b < len(tiles) else np.zeros((0, 5)), dtype=np.float64).reshape(-1, 5)
        return sorted({int(r) for r in t[:, 4] if 0 <= int(r) < self.presence.shape[0]})

    def _probe(self, trainer, batch) -> Probe | None:
        """Probe slots for this batch: per image, the classes a row of its tiles may probe (M=0 there, annotated in
        its modality, never held out) that none of its prompts names; None when no image has one."""
        per_image = []
        for b, texts in enumerate(batch["texts"]):
            rows = self._rows(batch, b)
            prompted = {self.text_class.get(x, self.text_class.get(x.strip(), -1)) for x in texts}
            m0 = set(np.flatnonzero(self.probe_mask[rows].any(axis=0)).tolist()) if rows else set()
            per_image.append(m0 - prompted)
        classes = sorted(set().union(*per_image))
        if not classes:
            return None
        ref = batch["txt_feats"]
        feats = torch.stack([self._embedding(trainer, c) for c in classes]).to(ref.device, ref.dtype)
        mask = torch.tensor([[c in mine for c in classes] for mine in per_image], device=ref.device)
        return Probe(classes, feats, mask)

    def _place_probed(self, trainer, batch, images: list[ImageInput], decisions: Decisions) -> Decisions:
        """Probed classes with targets take a negative prompt slot of their image (:func:`place_probed`)."""
        before = {(t.image, t.cls) for t in decisions.targets if t.slot >= images[t.image].prompt_slots}
        decisions, placed = place_probed(decisions, images, self.rng)
        self.probe_dropped += len(before) - len(placed)
        for b, slot, cls in placed:
            batch["txt_feats"][b, slot] = self._embedding(trainer, cls).to(batch["txt_feats"].dtype)
            batch["texts"][b][slot] = prompt_name(self.names[cls])
        taken = {(b, slot) for b, slot, _ in placed}
        self.probed.update(
            (self.sources[t.source], self.names[t.cls]) for t in decisions.targets if (t.image, t.slot) in taken
        )
        return decisions

    def _teacher_predictions(self, trainer, batch, probe: Probe | None = None) -> torch.Tensor:
        """(B, 4 + K (+ P probes), anchors) decoded predictions (xywh pixels, sigmoid scores) of the teacher."""
        from ultralytics.utils.torch_utils import unwrap_model

        model = trainer.ema.ema if (self.teacher == "ema" and trainer.ema) else unwrap_model(trainer.model)
        head = model.model[-1]
        txt = batch["txt_feats"]
        if probe is not None:
            txt = torch.cat((txt, probe.feats.unsqueeze(0).expand(txt.shape[0], -1, -1)), 1)
        nc, training = head.nc, model.training
        head.nc = txt.shape[1]  # the head's class count follows the prompts of this batch
        model.eval()
        try:
            with torch.no_grad():
                out = model.predict(batch["img"], txt_feats=txt)
        finally:
            head.nc = nc
            model.train(training)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()

    def _inputs(self, batch, y: torch.Tensor, probe: Probe | None = None) -> list[ImageInput]:
        h, w = batch["img"].shape[2:]
        k = batch["txt_feats"].shape[1]
        p = 0 if probe is None else len(probe.classes)
        scores = y[:, 4 : 4 + k + p]
        if p:  # a probe that does not apply to an image scores nothing there
            scores = scores.clone()
            scores[:, k:] *= probe.mask.to(scores.dtype).unsqueeze(-1)
        conf, slot = scores.max(1)
        boxes = _xywh2xyxy(y[:, :4].transpose(1, 2))
        boxes = torch.stack(
            (
                boxes[..., 0].clamp(0, w),
                boxes[..., 1].clamp(0, h),
                boxes[..., 2].clamp(0, w),
                boxes[..., 3].clamp(0, h),
            ),
            -1,
        )  # the part of a box inside the image is what can be judged
        scale = torch.tensor([w, h, w, h], device=batch["bboxes"].device, dtype=batch["bboxes"].dtype)
        gt_all = _xywh2xyxy(batch["bboxes"]) * scale
        bidx = batch["batch_idx"].long()
        tiles = batch.get("tiles") or [np.zeros((0, 5), np.float32)] * len(batch["texts"])
        out = []
        for b, texts in enumerate(batch["texts"]):
            keep = conf[b] >= self.rule.min_conf  # the rule applies each class's own C
            mine = bidx == b
            t = np.asarray(tiles[b], dtype=np.float64).reshape(-1, 5)
            out.append(
                ImageInput(
                    boxes=boxes[b][keep].cpu().numpy(),
                    scores=conf[b][keep].cpu().numpy(),
                    slots=slot[b][keep].cpu().numpy(),
                    gt_boxes=gt_all[mine].cpu().numpy(),
                    gt_slots=batch["cls"][mine].reshape(-1).long().cpu().numpy(),
                    slot_classes=np.array(
                        [self.text_class.get(x, self.text_class.get(x.strip(), -1)) for x in texts]
                        + ([] if probe is None else probe.classes),
                        dtype=int,
                    ),
                    tiles=t[:, :4],
                    tile_sources=t[:, 4].astype(int),
                    size=(int(h), int(w)),
                    prompt_slots=None if probe is None else k,
                )
            )
        return out

    def _crop(self, img: torch.Tensor, box) -> np.ndarray:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        return (img[:, y1:y2, x1:x2].clamp(0, 1) * 255).byte().permute(1, 2, 0).cpu().numpy()

    def _negative_embeddings(self, batch, decisions: Decisions) -> torch.Tensor:
        from medrov.model.build import fit_text_dim

        crops = [self._crop(batch["img"][n.image], n.crop) for n in decisions.negatives]
        emb = fit_text_dim(self.encoder.encode_image(crops).float(), batch["txt_feats"].shape[-1])
        return emb.to(batch["txt_feats"].device, batch["txt_feats"].dtype)

    def _inject_negatives(self, batch, decisions: Decisions) -> None:
        emb = self._negative_embeddings(batch, decisions)
        for j, n in enumerate(decisions.negatives):
            batch["txt_feats"][n.image, n.slot] = emb[j]

    # --- teacher "student": the training forward decides, no extra pass ----------------------------------------
    def _attach(self, trainer) -> None:
        """Hook the training model's head and wrap its loss criterion (once per model)."""
        from ultralytics.utils.torch_utils import unwrap_model

        model = unwrap_model(trainer.model)
        head = model.model[-1]
        if getattr(self, "_hooked", None) is not head:
            head.register_forward_hook(self._on_head)
            self._hooked = head
        if not isinstance(getattr(model, "criterion", None), _PendingTargets):
            model.criterion = _PendingTargets(getattr(model, "criterion", None) or model.init_criterion(), self)

    def _on_head(self, module, inputs, output):
        """Forward hook of the head in training: decide from this very forward's (detached) predictions. Boxes to
        append wait for the criterion (:class:`_PendingTargets`); negatives re-score the head with the crop
        embeddings in their slots (the neck's text attention keeps the original prompts: an approximation)."""
        batch, self._pending = getattr(self, "_pending", None), None
        if batch is None or not module.training or not isinstance(output, dict) or "scores" not in output:
            return None
        start = time.perf_counter()
        with torch.no_grad():
            detached = {
                "boxes": output["boxes"].detach(),
                "scores": output["scores"].detach(),
                "feats": [f.detach() for f in output["feats"]],
            }
            y = module._inference(detached).float()
        decisions = decide(self._inputs(batch, y), self.presence, self.rule, self.rng)
        result = None
        if decisions.negatives:
            emb = self._negative_embeddings(batch, decisions)
            text = inputs[1].clone()
            for j, n in enumerate(decisions.negatives):
                text[n.image, n.slot] = emb[j].to(text.dtype)
            feats, bs = output["feats"], output["feats"][0].shape[0]
            scores = torch.cat(
                [module.cv4[i](module.cv3[i](feats[i]), text).view(bs, module.nc, -1) for i in range(module.nl)], -1
            )
            result = {**output, "scores": scores}
        self._append = decisions.appended() or None
        self._count(batch, decisions)
        self.last_decisions = decisions
        self.seconds += time.perf_counter() - start
        self.batches += 1
        return result

    def _count(self, batch, decisions: Decisions) -> None:
        from PIL import Image

        for t in decisions.targets:
            self.labels[(self.sources[t.source], self.names[t.cls])] += 1
            if len(self.gallery[t.cls]) < self.gallery_size:
                crop = self._crop(batch["img"][t.image], t.box)
                if crop.size:
                    self.gallery[t.cls].append(np.asarray(Image.fromarray(crop).resize((THUMB, THUMB))))
        for n in decisions.negatives:
            self.negatives[(self.sources[n.source], self.names[n.cls])] += 1

    # --- per epoch --------------------------------------------------------------------------------------------
    def end_epoch(self, save_dir: Path, epoch: int) -> dict[str, float]:
        """Flat metrics of the epoch (``pseudo/...``), appended to ``pseudo_counts.csv`` with a gallery PNG; resets."""
        metrics = {
            "pseudo/labels": float(sum(self.labels.values())),
            "pseudo/negatives": float(sum(self.negatives.values())),
            "pseudo/probed": float(sum(self.probed.values())),
            "pseudo/probe_no_slot": float(self.probe_dropped),
            "pseudo/ms_per_batch": 1000 * self.seconds / max(self.batches, 1),
        }
        for (source, name), n in self.labels.items():
            metrics[f"pseudo/labels/{source}/{name.split('/', 1)[0]}"] = float(n)
        for (source, name), n in self.negatives.items():
            metrics[f"pseudo/negatives/{source}/{name.split('/', 1)[0]}"] = float(n)
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        path = save_dir / "pseudo_counts.csv"
        new = not path.exists()
        with path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["epoch", "kind", "source", "class", "count"])
            for kind, counter in (("label", self.labels), ("negative", self.negatives)):
                for (source, name), n in sorted(counter.items()):
                    writer.writerow([epoch, kind, source, name, n])
        if self.gallery:
            self.write_gallery(save_dir / f"pseudo_gallery_epoch{epoch}.png", epoch)
        log.info(
            "pseudo: epoch %d: %d pseudo-labels (%d of classes only probed), %d negatives, %.1f ms/batch",
            epoch,
            metrics["pseudo/labels"],
            metrics["pseudo/probed"],
            metrics["pseudo/negatives"],
            metrics["pseudo/ms_per_batch"],
        )
        self.reset()
        return metrics

    def write_gallery(self, path: Path, epoch: int) -> Path:
        """One row per class: the first pseudo-labelled crops of the epoch, so a person can judge them."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        classes = sorted(self.gallery)
        cols = max(len(v) for v in self.gallery.values())
        fig, axes = plt.subplots(len(classes), cols, figsize=(1.2 * cols + 2, 1.3 * len(classes)), squeeze=False)
        for r, c in enumerate(classes):
            for j in range(cols):
                ax = axes[r][j]
                ax.axis("off")
                if j < len(self.gallery[c]):
                    ax.imshow(self.gallery[c][j])
            axes[r][0].set_title(prompt_name(self.names[c]), fontsize=8, loc="left")
        fig.suptitle(f"pseudo-labels, epoch {epoch}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path
