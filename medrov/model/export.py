"""ONNX export of a trained detector, with its vocabulary baked in, and a reference ONNX predictor.

An open-vocabulary (YOLO-World worldv2) checkpoint is given a *fixed* list of prompts before export: their
embeddings become a constant ``txt_feats`` in the graph, so the ONNX model needs no text encoder at run time and
detects exactly those classes, in that order (FACTS: ONNX Runtime matched PyTorch within 1.2e-4). A closed-set
YOLOv8 checkpoint is exported with its own classes. Next to ``model.onnx`` a sidecar ``model.onnx.json`` records the
class order, the input size, the text encoder that made the prompt embeddings and the source weights, because a
deployed ONNX file is useless without knowing which class index means what and how it was made.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medrov.model.build import ModelError, Prompter, prompt_name, set_prompts

log = logging.getLogger(__name__)


@dataclass
class OnnxDetections:
    """Boxes of one image in pixels (x0, y0, x1, y1), scores, class indices and their names."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: list[str]


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def _load(weights: Path):
    """(ultralytics wrapper, open_vocabulary) for a local checkpoint; nothing is downloaded."""
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO, YOLOWorld

    from medrov.model.weights import load_checkpoint

    if not weights.is_file():
        raise ModelError(f"{weights}: weights not found (give a local checkpoint; nothing is downloaded)")
    net = load_checkpoint(weights)  # restricted unless trusted; refusals and bad files are a ModelError
    open_vocabulary = type(net).__name__ == "WorldModel"
    if not open_vocabulary and getattr(net, "task", "detect") != "detect":
        raise ModelError(f"{weights}: a {net.task} model, not a detector")
    return (YOLOWorld(str(weights)) if open_vocabulary else YOLO(str(weights), task="detect")), open_vocabulary


def export_onnx(
    weights: str | Path,
    prompts: Sequence[str] | None,
    prompter: Prompter | None,
    out: str | Path,
    imgsz: int = 640,
    *,
    half: bool = False,
    device: str = "cpu",
    simplify: bool = True,
    fold: bool = False,
) -> Path:
    """Export ``weights`` to ONNX at ``out`` (fixed input ``imgsz`` x ``imgsz``, batch 1) and write its sidecar.

    Open-vocabulary checkpoints get ``prompts`` (vocabulary entries ``name/synonym`` are reduced to their canonical
    name, as at inference) embedded by ``prompter``; closed-set checkpoints keep their classes, and ``prompts``, if
    given, must be exactly those classes. ``half`` (fp16) needs a CUDA ``device``.

    ``fold``: fold the prompts into the weights first (:func:`medrov.model.fold.fold`): the graph then has the shape
    and cost of a closed-set YOLOv8 and the same outputs; the folded PyTorch form is kept beside it as ``<out>.pt``
    (``model.onnx`` -> ``model.pt``). A closed-set model has nothing to fold and is exported as it is.

    Raises:
        ModelError: missing or unloadable weights, no prompts or no prompter for an open-vocabulary model, prompts
            that a closed-set model does not have, or a failed export.
    """
    weights, out = Path(weights), Path(out)
    if out.suffix.lower() != ".onnx":
        raise ModelError(f"{out}: the output file must end in .onnx")
    yolo, open_vocabulary = _load(weights)
    encoder: dict[str, Any] | None = None
    pytorch_form: Path | None = None
    if fold and out.with_suffix(".pt").resolve() == weights.resolve():
        raise ModelError(f"{out}: the folded PyTorch form would overwrite the source weights {weights}")
    if open_vocabulary:
        names = [prompt_name(p) for p in (prompts or [])]
        if not names:
            raise ModelError(f"{weights}: an open-vocabulary model needs at least one prompt to export")
        if len(set(names)) != len(names):
            raise ModelError(f"duplicate prompts {names}")
        if prompter is None:
            raise ModelError(f"{weights}: an open-vocabulary model needs a text encoder for its prompts")
        set_prompts(yolo, names, prompter(names))
        encoder = prompter.describe()
        if fold:
            from medrov.model.fold import fold as fold_model
            from medrov.model.fold import folded_yolo, save_folded

            folded = fold_model(yolo, names)
            pytorch_form = save_folded(folded, out.with_suffix(".pt"), {"imgsz": int(imgsz)})
            yolo = folded_yolo(folded)
    else:
        names = [prompt_name(str(v)) for _, v in sorted(dict(yolo.names).items())]
        if prompts and [prompt_name(p).lower() for p in prompts] != [n.lower() for n in names]:
            raise ModelError(f"closed-set model {weights} has the fixed classes {names}, not {list(prompts)}")

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medrov-export-") as tmp:
        # the exporter writes next to the model's pt_path: point it at a scratch folder so that nothing lands
        # (or is overwritten) beside the source weights
        yolo.model.pt_path = str(Path(tmp) / f"{out.stem}.pt")
        try:
            produced = yolo.export(
                format="onnx",
                imgsz=imgsz,
                half=half,
                device=device,
                simplify=simplify,
                dynamic=False,
                batch=1,
                nms=False,
            )
        except Exception as exc:
            raise ModelError(f"{weights}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
        if not produced or not Path(produced).is_file():
            raise ModelError(f"{weights}: ONNX export produced no file")
        shutil.move(str(produced), str(out))

    sidecar = {
        "format": "onnx",
        "classes": names,
        "open_vocabulary": open_vocabulary,
        "folded": pytorch_form is not None,
        "pytorch": pytorch_form.name if pytorch_form is not None else None,
        "imgsz": int(imgsz),
        "half": bool(half),
        "input": {"name": "images", "shape": [1, 3, int(imgsz), int(imgsz)], "layout": "BCHW RGB float 0-1"},
        "encoder": encoder,
        "weights": str(weights.resolve()),
    }
    sidecar_path(out).write_text(json.dumps(sidecar, indent=2) + "\n")
    log.info(
        "exported %s (%d classes, imgsz %d%s) to %s",
        weights,
        len(names),
        imgsz,
        ", folded" if pytorch_form is not None else "",
        out,
    )
    return out


def read_sidecar(onnx_path: str | Path) -> dict[str, Any]:
    """The sidecar of an exported model, or ``{}`` when it has none."""
    path = sidecar_path(onnx_path)
    return json.loads(path.read_text()) if path.is_file() else {}


def onnx_predict(
    onnx_path: str | Path,
    image: Any,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int | None = None,
    max_det: int = 300,
) -> OnnxDetections:
    """Run an exported model on one image (a path, or a uint8 array (H, W) / (H, W, 3) in RGB) through ultralytics'
    predictor (letterbox, ONNX Runtime on CPU, NMS), as :class:`medrov.model.detector.Detector` does in PyTorch.
    ``imgsz`` defaults to the sidecar's (the graph's input size is fixed)."""
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: ONNX model not found")
    meta = read_sidecar(onnx_path)
    imgsz = imgsz or meta.get("imgsz", 640)
    source = _bgr(image) if isinstance(image, np.ndarray) else str(image)
    model = YOLO(str(onnx_path), task="detect")
    result = model.predict(source, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det, device="cpu", verbose=False)[0]
    classes = result.boxes.cls.cpu().numpy().astype(int)
    labels = meta.get("classes") or [str(v) for _, v in sorted(dict(result.names).items())]
    return OnnxDetections(
        result.boxes.xyxy.cpu().numpy(), result.boxes.conf.cpu().numpy(), classes, [labels[c] for c in classes]
    )


def _bgr(image: np.ndarray) -> np.ndarray:
    """RGB or grey uint8 -> the BGR array ultralytics expects (as the PyTorch Detector does)."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3][..., ::-1])
