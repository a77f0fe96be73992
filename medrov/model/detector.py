"""A trained detector (open-vocabulary YOLO-World or closed-set YOLOv8) behind one small interface."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medrov.model.build import ModelError, Prompter, prompt_name, set_prompts


@dataclass
class Detections:
    """Boxes of one image in pixels (x0, y0, x1, y1), scores and class *names*."""

    boxes: np.ndarray
    scores: np.ndarray
    names: list[str]

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"label": n, "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
            for b, s, n in zip(self.boxes, self.scores, self.names)
        ]


def set_inference_threads(threads: int | None = None) -> int:
    """CPU threads for inference (default: every core). ultralytics' select_device() resets torch to
    min(8, cores - 1) threads whenever a predictor is set up, so its own default is changed too."""
    import os

    import torch
    from ultralytics.utils import torch_utils

    n = int(threads or os.cpu_count() or 1)
    torch_utils.NUM_THREADS = n
    torch.set_num_threads(n)
    return n


class Detector:
    """Load weights once, set a vocabulary, predict on image files or arrays (RGB or grey uint8)."""

    def __init__(
        self, weights: str | Path, prompter: Prompter | None = None, device: str = "cpu", threads: int | None = None
    ):
        """``threads``: CPU threads for inference (default: every core; ultralytics alone would leave one idle)."""
        from medrov.model.ultra import prepare_ultralytics

        prepare_ultralytics()
        self.threads = set_inference_threads(threads)
        from ultralytics import YOLO, YOLOWorld

        from medrov.model.record import record_of
        from medrov.model.weights import load_model_and_checkpoint

        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"{path}: weights not found")
        net, ckpt = load_model_and_checkpoint(path)
        # encoder and normalisation the weights were trained with (None: weights older than the record)
        self.record: dict[str, Any] | None = record_of(ckpt)
        self.open_vocabulary = type(net).__name__ == "WorldModel"
        self.yolo = YOLOWorld(str(path)) if self.open_vocabulary else YOLO(str(path))
        self.weights, self.prompter, self.device = path, prompter, device
        self.vocabulary: list[str] = []
        self.folded = False
        self._class_filter: list[int] | None = None
        if not self.open_vocabulary:
            self.closed_names = {int(k): prompt_name(v) for k, v in dict(self.yolo.names).items()}

    def set_vocabulary(self, names: Sequence[str]) -> None:
        """Prompts for an open-vocabulary model; for a closed-set model, the subset of its classes to keep."""
        names = [prompt_name(n) for n in names]
        if self.folded:
            if names != self.vocabulary:
                raise ModelError(
                    f"{self.weights}: the vocabulary {self.vocabulary} is folded into the weights; "
                    f"load the model again to detect {names}"
                )
            return
        if self.open_vocabulary:
            if self.prompter is None:
                raise ModelError("an open-vocabulary model needs a text encoder for its prompts")
            set_prompts(self.yolo, names, self.prompter(names))
            # the predictor keeps its own (fused) copy of the model: rebuild it so the new prompts are used
            self.yolo.predictor = None
            self._class_filter = None
        else:
            index = {n.lower(): i for i, n in self.closed_names.items()}
            missing = [n for n in names if n.lower() not in index]
            if missing:
                raise ModelError(
                    f"closed-set model {self.weights} cannot detect {missing}: it knows only its training classes"
                )
            self._class_filter = [index[n.lower()] for n in names]
        self.vocabulary = names

    def fold(self) -> None:
        """Fold the current vocabulary into the network (:func:`medrov.model.fold.fold`): same detections at
        closed-set cost; the vocabulary is fixed from then on."""
        from medrov.model.fold import fold, folded_yolo

        if not self.open_vocabulary:
            raise ModelError(f"{self.weights}: a closed-set model has no text to fold")
        if not self.vocabulary:
            raise ModelError("set_vocabulary() before fold()")
        if not self.folded:
            self.yolo = folded_yolo(fold(self.yolo, self.vocabulary))
            self.folded = True

    def predict(
        self,
        images: Sequence[Any],
        imgsz: int = 640,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        batch: int = 8,
    ) -> list[Detections]:
        """Images are paths or uint8 arrays (H, W) / (H, W, 3) in RGB."""
        if not self.vocabulary:
            raise ModelError("set_vocabulary() first")
        sources = [self._bgr(im) if isinstance(im, np.ndarray) else str(im) for im in images]
        out: list[Detections] = []
        for i in range(0, len(sources), batch):
            results = self.yolo.predict(
                sources[i : i + batch],
                imgsz=imgsz,
                conf=conf,
                iou=iou,
                max_det=max_det,
                device=self.device,
                classes=self._class_filter,
                verbose=False,
            )
            for r in results:
                cls = r.boxes.cls.cpu().numpy().astype(int)
                names = [self.vocabulary[c] if self.open_vocabulary else self.closed_names[c] for c in cls]
                out.append(Detections(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy(), names))
        return out

    @staticmethod
    def _bgr(image: np.ndarray) -> np.ndarray:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        return np.ascontiguousarray(image[..., :3][..., ::-1])
