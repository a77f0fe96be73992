"""ONNX export: the exported graph (vocabulary baked in) gives the PyTorch detector's boxes and scores.

The models are tiny and untrained. A freshly initialised YOLOv8 has vanishing activations (every anchor gets the
same output whatever the image), so before saving we calibrate the BatchNorm statistics on random images and
give the heads biases that put scores and boxes in a useful range: the outputs then depend on the image, the
anchor and the class, and a wrong export (lost prompts, shifted boxes, swapped classes) cannot pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

IMGSZ = 128
PROMPTS = ["liver", "kidney"]
TOP_K = 20


def _calibrate(model, seed: int = 0) -> None:
    """BatchNorm running statistics from a few random images (cumulative average), then eval mode."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.train()
        model(torch.rand(4, 3, IMGSZ, IMGSZ, generator=gen))
    model.eval()
    for bn in bns:
        bn.momentum = 0.03


def _shape_boxes(head) -> None:
    """Box distributions that favour short distances, with some dependence on the features."""
    import torch

    bins = torch.arange(head.reg_max, dtype=torch.float32)
    with torch.no_grad():
        for seq in head.cv2:
            seq[-1].weight.mul_(0.1)
            seq[-1].bias.copy_((-0.5 * bins).repeat(4))


def _save(model, path: Path) -> Path:
    import torch

    torch.save({"model": model, "train_args": {"imgsz": IMGSZ}}, str(path))
    return path


def _image() -> np.ndarray:
    """RGB 128 x 128: two gradients, a rectangle and a disc."""
    y, x = np.mgrid[:IMGSZ, :IMGSZ]
    img = np.zeros((IMGSZ, IMGSZ, 3), np.uint8)
    img[..., 0] = (x * 2).astype(np.uint8)
    img[..., 1] = (y * 2).astype(np.uint8)
    img[20:60, 30:90] = [220, 60, 60]
    img[(x - 90) ** 2 + (y - 95) ** 2 < 18**2] = [40, 200, 120]
    return img


def _assert_same(torch_det, onnx_det, names: list[str]) -> None:
    """Top-K by score: scores within 1e-3; each PyTorch box has an ONNX box of the same class within 0.05 px."""
    assert len(torch_det.scores) >= TOP_K, f"the PyTorch model gave only {len(torch_det.scores)} boxes"
    assert abs(len(onnx_det.scores) - len(torch_det.scores)) <= 2
    a = np.argsort(-torch_det.scores, kind="stable")[:TOP_K]
    b = np.argsort(-onnx_det.scores, kind="stable")[: TOP_K + 5]
    np.testing.assert_allclose(onnx_det.scores[b[:TOP_K]], torch_det.scores[a], atol=1e-3)
    assert np.ptp(torch_det.scores[a]) > 0.01, "scores too alike to test anything"
    assert np.ptp(torch_det.boxes[a], axis=0).max() > 5, "boxes too alike to test anything"
    onnx_names = [names[c] for c in onnx_det.classes[b]]
    for i in a:  # matched rather than zipped: near-equal scores may swap places between runtimes
        close = [
            j
            for j, n in zip(b, onnx_names)
            if n == torch_det.names[i]
            and abs(onnx_det.scores[j] - torch_det.scores[i]) < 1e-3
            and np.abs(onnx_det.boxes[j] - torch_det.boxes[i]).max() < 0.05
        ]
        assert close, (
            f"PyTorch box {torch_det.boxes[i]} ({torch_det.names[i]}, {torch_det.scores[i]:.4f}) not in ONNX output"
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny YOLO-World checkpoint, its ONNX export with PROMPTS, and the prompter."""
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    import torch

    from medrov.model.build import Prompter, build_world, set_prompts
    from medrov.model.export import export_onnx
    from medrov.text import build_encoder

    root = tmp_path_factory.mktemp("world")
    prompter = Prompter(build_encoder("minilm"), root / "c")
    torch.manual_seed(0)
    model = build_world("n", nc=len(PROMPTS))
    set_prompts(model, ["placeholder a", "placeholder b"], prompter(["placeholder a", "placeholder b"]))
    head = model.model[-1]
    _calibrate(model)
    with torch.no_grad():
        for contrastive in head.cv4:  # logits of a few units instead of -10 (untrained init)
            contrastive.bias.fill_(0.0)
            contrastive.logit_scale.fill_(-6.0)
    _shape_boxes(head)
    weights = _save(model, root / "world.pt")
    onnx = export_onnx(weights, PROMPTS, prompter, root / "out" / "world.onnx", imgsz=IMGSZ)
    return weights, onnx, prompter


def test_world_export_matches_pytorch(world):
    from medrov.model.detector import Detector
    from medrov.model.export import onnx_predict

    weights, onnx, prompter = world
    assert onnx.is_file() and not weights.with_suffix(".onnx").exists()  # nothing written beside the weights
    detector = Detector(weights, prompter)
    detector.set_vocabulary(PROMPTS)
    image = _image()
    torch_det = detector.predict([image], imgsz=IMGSZ, conf=0.001)[0]
    onnx_det = onnx_predict(onnx, image, conf=0.001, iou=0.7)
    assert set(torch_det.names) == set(PROMPTS)  # both classes occur, so a class swap would show
    _assert_same(torch_det, onnx_det, PROMPTS)


def test_world_sidecar(world):
    from medrov.model.export import read_sidecar, sidecar_path

    weights, onnx, prompter = world
    assert sidecar_path(onnx) == onnx.with_name("world.onnx.json")
    meta = json.loads(sidecar_path(onnx).read_text())
    assert meta == read_sidecar(onnx)
    assert meta["classes"] == PROMPTS and meta["open_vocabulary"] is True
    assert meta["imgsz"] == IMGSZ and meta["input"]["shape"] == [1, 3, IMGSZ, IMGSZ]
    assert meta["encoder"] == prompter.describe() and meta["encoder"]["spec"] == "minilm"
    assert meta["weights"] == str(weights.resolve())


def test_world_export_needs_prompts_and_encoder(world, tmp_path):
    from medrov.model.build import ModelError
    from medrov.model.export import export_onnx

    weights, _, prompter = world
    with pytest.raises(ModelError, match="prompt"):
        export_onnx(weights, [], prompter, tmp_path / "m.onnx", imgsz=IMGSZ)
    with pytest.raises(ModelError, match="text encoder"):
        export_onnx(weights, PROMPTS, None, tmp_path / "m.onnx", imgsz=IMGSZ)
    with pytest.raises(ModelError, match=".onnx"):
        export_onnx(weights, PROMPTS, prompter, tmp_path / "m.bin", imgsz=IMGSZ)


def test_missing_weights_raise_model_error(tmp_path):
    from medrov.model.build import ModelError
    from medrov.model.export import export_onnx, onnx_predict

    with pytest.raises(ModelError, match="not found"):
        export_onnx(tmp_path / "absent.pt", PROMPTS, None, tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="not found"):
        onnx_predict(tmp_path / "absent.onnx", _image())


def test_closed_set_export_matches_pytorch(tmp_path):
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from medrov.model.build import ModelError
    from medrov.model.detector import Detector
    from medrov.model.export import export_onnx, onnx_predict, read_sidecar

    names = ["liver", "spleen", "kidney"]
    torch.manual_seed(1)
    model = DetectionModel("yolov8n.yaml", ch=3, nc=len(names), verbose=False)
    model.names = dict(enumerate(names))
    _calibrate(model)
    head = model.model[-1]
    with torch.no_grad():
        for seq in head.cv3:  # class logits around 0 instead of the untrained log(5 / nc / 400)
            seq[-1].weight.mul_(0.2)
            seq[-1].bias.fill_(0.0)
    _shape_boxes(head)
    weights = _save(model, tmp_path / "closed.pt")

    with pytest.raises(ModelError, match="fixed classes"):
        export_onnx(weights, ["liver", "pancreas"], None, tmp_path / "x.onnx", imgsz=IMGSZ)
    onnx = export_onnx(weights, None, None, tmp_path / "closed.onnx", imgsz=IMGSZ)
    meta = read_sidecar(onnx)
    assert meta["classes"] == names and meta["open_vocabulary"] is False and meta["encoder"] is None

    detector = Detector(weights)
    detector.set_vocabulary(names)
    image = _image()
    torch_det = detector.predict([image], imgsz=IMGSZ, conf=0.001)[0]
    onnx_det = onnx_predict(onnx, image, conf=0.001, iou=0.7)
    assert len(set(torch_det.names)) >= 2
    _assert_same(torch_det, onnx_det, names)
