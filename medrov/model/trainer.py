"""The MedROV trainer: ultralytics' ``WorldTrainer`` with our text encoder, held-out novel classes and a
vocabulary-aware prompt sampler. Only narrow hooks are overridden; nothing of ultralytics is copied.

Settings that are not ultralytics train arguments (ultralytics rejects unknown keys) travel as class attributes
of a subclass made per run by :func:`make_world_trainer`. ultralytics' DDP launcher pickles the trainer *class*
with cloudpickle; a class made inside a function is pickled by value, attributes included, so each GPU worker
gets the same encoder spec, cache directory and held-out classes.
"""

from __future__ import annotations

import logging
from copy import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ultralytics.data.augment import RandomLoadText
from ultralytics.data.dataset import YOLODataset, YOLOMultiModalDataset
from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator
from ultralytics.models.yolo.world import WorldTrainer
from ultralytics.models.yolo.world.train import on_pretrain_routine_end as stock_pretrain_end
from ultralytics.utils import RANK
from ultralytics.utils.torch_utils import unwrap_model

from medrov.data.presence import presence_rows
from medrov.errors import ConfigError
from medrov.model.build import Prompter, prompt_name, set_prompts

log = logging.getLogger(__name__)


class PromptSampler(RandomLoadText):
    """ultralytics' per-image prompt sampler, with negatives drawn only from ``negatives`` (global class ids).

    Held-out (novel) classes are never shown as negatives in training. With ``presence`` (presence rows x classes:
    the sources' rows, then per-image rows, :func:`medrov.data.presence.presence_rows`) a class with M=0 in the
    row of any tile of the image (``labels["tiles"]``, set by :class:`SourceTiles`) is not a negative either: that
    image may contain it unannotated, so showing its prompt would train its objects as background. Positives are
    always kept.
    """

    def __init__(self, negatives: Sequence[int] | None = None, presence: np.ndarray | None = None, **kwargs):
        super().__init__(**kwargs)
        self.negatives = None if negatives is None else sorted(set(int(c) for c in negatives))
        self.presence = None if presence is None else np.asarray(presence, dtype=int)

    def allowed_negatives(self, labels: dict[str, Any]) -> list[int] | None:
        """Global class ids that may be sampled as negatives for this image (None: any class)."""
        if self.presence is None:
            return self.negatives
        pool = range(self.presence.shape[1]) if self.negatives is None else self.negatives
        tiles = np.asarray(labels.get("tiles", np.zeros((0, 5))), dtype=np.float64).reshape(-1, 5)
        sources = sorted({int(s) for s in tiles[:, 4] if 0 <= int(s) < self.presence.shape[0]})
        if not sources:
            return list(pool)
        unannotated = (self.presence[sources] == 0).any(axis=0)
        return [c for c in pool if not unannotated[c]]

    def get_params(self, labels: dict[str, Any]) -> dict[str, Any]:
        allowed = self.allowed_negatives(labels)
        if allowed is None:
            return super().get_params(labels)
        cls = np.asarray(labels["cls"], dtype=int).reshape(-1)
        pool = sorted(set(cls.tolist()) | set(allowed))
        position = {c: i for i, c in enumerate(pool)}
        compact = {
            **labels,
            "texts": [labels["texts"][c] for c in pool],
            "cls": np.array([[position[c]] for c in cls.tolist()], dtype=int).reshape(-1, 1),
        }
        if self.presence is not None and self.padding:
            # a small pool leaves most of the max_samples slots to padding, which repeats class names: only the
            # names of this image's negatives (an M=0 name would come back; a positive's name repeated in a slot
            # without its boxes would train that very class as background and crush its scores)
            saved = self.padding_value
            self.padding_value = padding_names(labels["texts"], pool, set(cls.tolist())) or saved
            try:
                return super().get_params(compact)
            finally:
                self.padding_value = saved
        return super().get_params(compact)


def padding_names(texts: Sequence[Sequence[str]], pool: Sequence[int], positives: set[int]) -> list[str]:
    """Prompt padding for one image: every name of the pool's classes that are not among its positives; when the
    pool holds positives only, their names (the stock behaviour; nothing else may be shown)."""
    negatives = [t for c in pool if c not in positives for t in texts[c]]
    return negatives or [t for c in pool for t in texts[c]]


class _HoldOut:
    """Drops boxes of held-out classes (``data['held_out']``) from the labels a dataset serves."""

    def get_labels(self):
        labels = super().get_labels()
        held = np.asarray(sorted(self.data.get("held_out", ())), dtype=int)
        if held.size:
            for lb in labels:
                keep = ~np.isin(lb["cls"].reshape(-1).astype(int), held)
                if not keep.all():
                    lb["cls"], lb["bboxes"] = lb["cls"][keep], lb["bboxes"][keep]
                    if len(lb.get("segments") or []):
                        lb["segments"] = [s for s, k in zip(lb["segments"], keep) if k]
        return labels


class SourceTiles:
    """Takes the source-tile boxes (class ids from ``nc`` on) out of the labels into ``labels["tiles"]``
    (x1, y1, x2, y2, source; pixels of the final training image) and drops their marker prompts. Runs after
    mosaic, affine and flips, right before the prompt sampler."""

    def __init__(self, nc: int):
        self.nc = nc

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        cls = np.asarray(labels["cls"]).reshape(-1)
        tile = cls >= self.nc
        inst = labels["instances"]
        tiles = np.zeros((0, 5), dtype=np.float32)
        if tile.any():
            inst.convert_bbox("xyxy")
            if inst.normalized:
                h, w = labels["img"].shape[:2]
                inst.denormalize(w, h)
            tiles = np.concatenate([inst.bboxes[tile], (cls[tile] - self.nc)[:, None]], 1).astype(np.float32)
            labels["instances"], labels["cls"] = inst[~tile], labels["cls"][~tile]
        labels["texts"] = labels["texts"][: self.nc]
        labels["tiles"] = tiles
        return labels


class OmnisTrainDataset(_HoldOut, YOLOMultiModalDataset):
    """Training images with per-image prompts (synonyms picked at random by ultralytics) and our sampler.

    With ``data["track_sources"]`` every image also carries one box covering it, of class ``nc + source`` (with a
    marker prompt per source appended to the class texts, the same list for every image, so ultralytics' mosaic
    keeps the ids), and mosaic, affine and flips move the source regions exactly as they move objects;
    :class:`SourceTiles` takes them out again before the prompts are sampled.
    """

    def update_labels_info(self, label):
        if not self.data.get("track_sources"):
            return super().update_labels_info(label)
        if not hasattr(self, "_sources"):
            rows = presence_rows(self.data["path"])
            # one marker per presence row: a per-image source's images carry their own row through the mosaic
            self._sources, self._source_names = rows.image_row, rows.names
        nc = int(self.data["nc"])
        source = self._sources.get(str(Path(label["im_file"]).resolve()), -1)
        if source >= 0:
            label["bboxes"] = np.concatenate([label["bboxes"].reshape(-1, 4), _whole_image(label)], 0).astype(
                np.float32
            )
            label["cls"] = np.concatenate([label["cls"].reshape(-1, 1), [[nc + source]]], 0).astype(np.float32)
            if len(label.get("segments") or []):
                label["segments"] = list(label["segments"]) + [np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)]
        label = super().update_labels_info(label)
        label["texts"] = list(label["texts"]) + [[f"<source:{name}>"] for name in self._source_names]
        return label

    def build_text_transforms(self, transforms, max_samples):
        transforms = super().build_text_transforms(transforms, max_samples)
        allowed = self.data.get("negatives")
        presence = None
        if self.data.get("presence_sampling") and self.data.get("track_sources"):
            presence = presence_rows(self.data["path"], list(self.data["names"].values())).matrix
        for i, t in enumerate(transforms.transforms):
            if type(t) is RandomLoadText:
                transforms.transforms[i] = PromptSampler(
                    negatives=allowed,
                    presence=presence,
                    max_samples=t.max_samples,
                    padding=t.padding,
                    padding_value=t.padding_value,
                    prompt_format=t.prompt_format,
                )
                if self.data.get("track_sources"):
                    transforms.transforms.insert(i, SourceTiles(int(self.data["nc"])))
                break
        return transforms


def annotated_only(pred: dict[str, torch.Tensor], annotated: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The predictions of one image whose class its presence row annotates (``annotated``: (classes,) bool, M=1).

    A class with M=0 may be in the image unlabelled, so its prediction is neither a true nor a false positive; one
    with M=-1 cannot be there, and no source-annotated box of it exists to match. ``None`` (an image without a
    presence row) keeps everything.
    """
    if annotated is None or not len(pred["cls"]):
        return pred
    keep = torch.as_tensor(annotated, dtype=torch.bool, device=pred["cls"].device)[pred["cls"].long()]
    return {k: v[keep] for k, v in pred.items()}


class PresenceValidator(DetectionValidator):
    """ultralytics' validation during training (best-epoch selection, ``medrov tune``'s objective) under the same
    protocol as ``medrov evaluate``: an image's predictions of classes its presence row does not annotate are not
    scored. Without it a model that finds the kidney CT's unlabelled liver (what pseudo-labels teach) is charged a
    false positive for each one, and the sweep and the best checkpoint favour forgetting it."""

    _rows = None

    def annotated(self, im_file: str) -> np.ndarray | None:
        """(classes,) bool: M=1 in the presence row of ``im_file``; None when it has none."""
        if self._rows is None:  # a separate validation set (``train.val_data``) brings its own presence rows
            root = self.data.get("val_root", self.data["path"])
            self._rows = presence_rows(root, list(self.data["names"].values()))
        row = self._rows.image_row.get(str(Path(im_file).resolve()), -1)
        return None if row < 0 else self._rows.matrix[row] == 1

    def update_metrics(self, preds, batch) -> None:
        preds = [annotated_only(p, self.annotated(f)) for p, f in zip(preds, batch["im_file"])]
        super().update_metrics(preds, batch)


def _presence_validator(trainer) -> PresenceValidator:
    return PresenceValidator(
        trainer.test_loader, save_dir=trainer.save_dir, args=copy(trainer.args), _callbacks=trainer.callbacks
    )


def with_val_data(data: dict[str, Any], val_data: str | Path) -> dict[str, Any]:
    """The trainer's data with the val split of another Omnis (``train.val_data``, e.g. a fully annotated copy of
    the training sources): per-epoch validation, the best checkpoint and ``medrov tune``'s objective then score it.

    Raises:
        ConfigError: its classes (names, ids) differ from the training data's (``medrov.model.train.val_data_file``
            checks this before a run starts).
    """
    from ultralytics.data.utils import check_det_dataset

    other = check_det_dataset(str(val_data))
    if dict(other["names"]) != dict(data["names"]):
        raise ConfigError(f"train.val_data: {val_data}: its classes differ from the training data's")
    return {**data, "val": other["val"], "val_root": str(other["path"])}


class _ValData:
    """``get_dataset`` with the val split of ``val_data`` (class attribute; None: the training data's own)."""

    val_data: str | None = None

    def get_dataset(self):
        data = super().get_dataset()
        if self.val_data:
            data = with_val_data(data, self.val_data)
            if RANK in {-1, 0}:
                log.info("validation: the val split of %s (train.val_data)", self.val_data)
        return data


def _whole_image(label) -> np.ndarray:
    """The box covering the whole image in the label's own format (ultralytics stores normalised xywh)."""
    if label.get("normalized", True):
        return np.array([[0.5, 0.5, 1.0, 1.0]], np.float32)
    h, w = label["ori_shape"]
    return np.array([[w / 2, h / 2, w, h]], np.float32)


class OmnisEvalDataset(_HoldOut, YOLODataset):
    """Validation images during training: held-out classes are not scored (they would leak into model selection)."""


def _omnis_data(
    data: dict[str, Any], held_out: Sequence[int], track_sources: bool = False, presence_sampling: bool = False
) -> dict[str, Any]:
    held = sorted(set(int(c) for c in held_out))
    return {
        **data,
        "held_out": held,
        "negatives": [c for c in range(int(data["nc"])) if c not in set(held)],
        "track_sources": track_sources or presence_sampling,
        "presence_sampling": presence_sampling,
    }


def _dataset(trainer, img_path, mode, batch, multi_modal: bool):
    """Our dataset classes, built with the arguments ultralytics' ``build_yolo_dataset`` passes for detection."""
    from ultralytics.data.utils import get_split_fraction
    from ultralytics.utils import colorstr

    cfg = trainer.args
    model = trainer.model if hasattr(trainer.model, "parameters") else None  # a name before set-up
    gs = max(int(unwrap_model(model).stride.max() if model is not None else 0), 32)
    train = mode == "train"
    data = _omnis_data(
        trainer.data,
        trainer.held_out,
        bool(getattr(trainer, "pseudo", None)) and train,
        bool(getattr(trainer, "presence_sampling", False)) and train,
    )
    cls = OmnisTrainDataset if (multi_modal and mode == "train") else OmnisEvalDataset
    return cls(
        img_path=img_path,
        imgsz=cfg.imgsz,
        batch_size=batch,
        augment=mode == "train",
        hyp=cfg,
        rect=cfg.rect or mode == "val",
        cache=cfg.cache or None,
        single_cls=cfg.single_cls or False,
        stride=gs,
        pad=0.0 if mode == "train" else 0.5,
        prefix=colorstr(f"{mode}: "),
        task=cfg.task,
        classes=cfg.classes,
        data=data,
        fraction=get_split_fraction(cfg.fraction, "train" if mode == "train" else cfg.split),
    )


def _medrov_pretrain_end(trainer) -> None:
    """Replaces ultralytics' callback that builds CLIP: the EMA model gets every class name through our encoder."""
    names = [prompt_name(n) for n in trainer.test_loader.dataset.data["names"].values()]
    set_prompts(trainer.ema.ema, names, trainer.prompter(names))


def _pseudo_epoch_end(trainer) -> None:
    """Counters and gallery of the epoch; ``trainer.pseudo_metrics`` is what trackers log (rank zero writes)."""
    if trainer._mechanisms is not None and RANK in {-1, 0}:
        trainer.pseudo_metrics = trainer._mechanisms.end_epoch(trainer.save_dir, trainer.epoch + 1)


class MedrovWorldTrainer(_ValData, WorldTrainer):
    """WorldTrainer with our text encoder. Use :func:`make_world_trainer`, which fills the class attributes."""

    text_spec: str = "minilm"
    text_fallback: str | None = None
    text_cache_dir: str | None = None
    held_out: tuple[int, ...] = ()
    pseudo: dict[str, Any] | None = None  # the ``pseudo`` params section; None = plain YOLO-World training
    presence_sampling: bool = False  # M=0 classes of a tile's source are never negative prompts of its image
    _prompter: Prompter | None = None
    _mechanisms = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pseudo_metrics: dict[str, float] = {}
        if self.pseudo:
            self.add_callback("on_fit_epoch_end", _pseudo_epoch_end)

    @property
    def mechanisms(self):
        """Pseudo-labels and negatives (built on first use: needs the data and the encoder)."""
        if self._mechanisms is None and self.pseudo:
            from medrov.model.mechanisms import Mechanisms

            self._mechanisms = Mechanisms(self.pseudo, self.data, self.prompter.encoder, self.held_out)
            if RANK in {-1, 0}:
                log.info("pseudo: %s", self._mechanisms.describe())
        return self._mechanisms

    def preprocess_batch(self, batch):
        batch = super().preprocess_batch(batch)
        if self.pseudo and self.model is not None and self.model.training:
            self.mechanisms(self, batch)
        return batch

    @property
    def prompter(self) -> Prompter:
        if self._prompter is None:
            from medrov.text import load_encoder

            encoder = load_encoder(self.text_spec, self.text_fallback)
            if RANK in {-1, 0}:
                log.info("text encoder: %s (%d-d)", encoder.identity, encoder.dim)
            self._prompter = Prompter(encoder, self.text_cache_dir)
        return self._prompter

    def get_model(self, cfg=None, weights=None, verbose=True):
        model = super().get_model(cfg, weights, verbose)
        hooks = self.callbacks["on_pretrain_routine_end"]
        hooks[:] = [h for h in hooks if h is not stock_pretrain_end]
        if _medrov_pretrain_end not in hooks:
            hooks.append(_medrov_pretrain_end)
        return model

    def get_validator(self):
        return _presence_validator(self)

    def build_dataset(self, img_path, mode="train", batch=None):
        dataset = _dataset(self, img_path, mode, batch, multi_modal=True)
        if mode == "train":
            self.set_text_embeddings([dataset], batch)
        return dataset

    def generate_text_embeddings(self, texts, batch, cache_dir):
        texts = sorted(texts)
        return dict(zip(texts, self.prompter(texts).to(self.device)))


class MedrovDetectionTrainer(_ValData, DetectionTrainer):
    """Closed-set YOLOv8 baseline on the same data: same held-out classes, no text."""

    held_out: tuple[int, ...] = ()

    def get_validator(self):
        return _presence_validator(self)

    def build_dataset(self, img_path, mode="train", batch=None):
        return _dataset(self, img_path, mode, batch, multi_modal=False)


def make_world_trainer(
    text_spec: str,
    text_fallback: str | None,
    text_cache_dir: str | Path | None,
    held_out: Sequence[int],
    pseudo: dict[str, Any] | None = None,
    val_data: str | Path | None = None,
):
    """A per-run trainer class carrying our settings (see the module docstring for why a class).

    ``pseudo`` (the ``pseudo`` params section plus ``seed``) switches the training mechanisms on; None or both
    mechanisms off gives plain YOLO-World training (no teacher pass). ``pseudo["presence_sampling"]`` alone tracks
    the sources of mosaic tiles (no teacher pass) so the prompt sampler can skip M=0 classes.
    """
    active = pseudo if pseudo and (pseudo.get("labels") or pseudo.get("negatives")) else None
    attrs = {
        "text_spec": text_spec,
        "text_fallback": text_fallback,
        "text_cache_dir": None if text_cache_dir is None else str(text_cache_dir),
        "held_out": tuple(int(c) for c in held_out),
        "pseudo": None if active is None else dict(active),
        "presence_sampling": bool(pseudo and pseudo.get("presence_sampling")),
        "val_data": None if val_data is None else str(val_data),
    }
    return type("MedrovWorldRunTrainer", (MedrovWorldTrainer,), attrs)


def make_detection_trainer(held_out: Sequence[int], val_data: str | Path | None = None):
    attrs = {"held_out": tuple(int(c) for c in held_out), "val_data": None if val_data is None else str(val_data)}
    return type("MedrovDetectionRunTrainer", (MedrovDetectionTrainer,), attrs)
