"""Folding a fixed vocabulary into a worldv2 network: same outputs as the unfolded model, closed-set shape.

The model is a tiny yolov8n-worldv2 built from its yaml (nothing downloaded). Untrained, every score would sit at
sigmoid(-10) and any fold would "match", so before the checks the BatchNorm statistics are calibrated on real
BCCD images and the contrastive and attention biases get values that spread the scores: each check also asserts
that its outputs vary enough to expose a wrong fold (a lost BN, a swapped prompt, an unscaled guide).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BCCD = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "bccd" / "BCCD" / "JPEGImages"
IMGSZ = 640
PROMPTS = ["red blood cell", "white blood cell", "platelets"]


def _bccd_images(n: int) -> list[Path]:
    if not BCCD.is_dir():
        pytest.skip(f"{BCCD} not found (the shared real-data folder)")
    return sorted(BCCD.glob("*.jpg"))[:n]


def _letterboxed(paths: list[Path], imgsz: int = IMGSZ):
    """Real images as the predictor feeds them: letterboxed to imgsz, RGB, 0-1, (B, 3, H, W)."""
    import cv2
    import torch
    from ultralytics.data.augment import LetterBox

    box = LetterBox((imgsz, imgsz), auto=False)
    ims = [box(image=cv2.imread(str(p)))[..., ::-1].transpose(2, 0, 1) / 255.0 for p in paths]
    return torch.from_numpy(np.ascontiguousarray(np.stack(ims))).float()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(checkpoint path, WorldModel with PROMPTS set, prompter): calibrated on BCCD, biases that spread scores."""
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    import torch

    from medrov.model.build import Prompter, build_world, set_prompts
    from medrov.text import build_encoder

    root = tmp_path_factory.mktemp("fold")
    prompter = Prompter(build_encoder("minilm"), root / "text-cache")
    torch.manual_seed(0)
    model = build_world("n", nc=len(PROMPTS))
    set_prompts(model, PROMPTS, prompter(PROMPTS))
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # cumulative average over the calibration batch
        bn.reset_running_stats()
        bn.momentum = None
    with torch.no_grad():
        model.train()
        model(_letterboxed(_bccd_images(4), 320))
        model.eval()
        for bn in bns:
            bn.momentum = 0.03
        gen = torch.Generator().manual_seed(1)
        for m in model.modules():
            if type(m).__name__ == "MaxSigmoidAttnBlock":  # per-head gates away from their zero init
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
        for contrastive in model.model[-1].cv4:  # logits of a few units instead of -10 (untrained init)
            contrastive.bias.fill_(0.0)
            contrastive.logit_scale.fill_(-2.0)
            contrastive.norm.weight.mul_(1 + 0.5 * torch.rand(contrastive.norm.weight.shape, generator=gen))
        for seq in model.model[-1].cv2:  # box distributions that favour short distances (as test_export)
            seq[-1].weight.mul_(0.1)
            seq[-1].bias.copy_((-0.5 * torch.arange(16.0)).repeat(4))
    weights = root / "world.pt"
    torch.save({"model": model, "train_args": {"imgsz": IMGSZ}}, str(weights))
    return weights, model, prompter


def test_folded_network_matches_unfolded_on_bccd(world):
    """Raw outputs for every anchor on real images: boxes within 1e-3 px, scores within 1e-4 (deployed fused form)."""
    import copy

    import torch

    from medrov.model.fold import fold

    _, model, _ = world
    x = _letterboxed(_bccd_images(3))
    folded = fold(model).fuse(verbose=False)
    with torch.inference_mode():
        ref = model(x)[0]
        out = folded(x)[0]
        ref_fused = copy.deepcopy(model).fuse(verbose=False)(x)[0]
    assert out.shape == ref.shape == (3, 4 + len(PROMPTS), 8400)
    scores = ref[:, 4:]
    assert scores.std() > 0.05 and scores.max() > 0.5, "scores too alike to test anything"
    assert (scores[0] - scores[1]).abs().max() > 0.05, "outputs do not depend on the image"
    assert (scores[:, 0] - scores[:, 1]).abs().max() > 0.05, "outputs do not depend on the prompt"
    assert (out[:, :4] - ref[:, :4]).abs().max() < 1e-3
    assert (out[:, 4:] - scores).abs().max() < 1e-4
    # the unfolded model fused the same way differs from its unfused self by as much as the fold does, or more
    assert (ref_fused[:, 4:] - scores).abs().max() < 1e-4


def test_fold_is_exact_in_float64(world):
    """The fold is algebra, not an approximation: in float64 folded and unfolded agree to 1e-6 (the float32 gaps
    above are rounding of the network itself: the float32 model differs from its float64 self by as much)."""
    import copy

    import torch

    from medrov.model.fold import fold

    _, model, _ = world
    x = _letterboxed(_bccd_images(1)).double()
    ref64 = copy.deepcopy(model).double()
    ref64.txt_feats = ref64.txt_feats.double()
    with torch.inference_mode():
        ref = ref64(x)[0]
        out = fold(model).double()(x)[0]
    assert ref[:, 4:].std() > 0.05
    assert (out[:, :4] - ref[:, :4]).abs().max() < 1e-5
    assert (out[:, 4:] - ref[:, 4:]).abs().max() < 1e-6


def test_folded_network_is_closed_set_shaped(world):
    import torch
    from ultralytics.nn.modules.block import C2fAttn, ImagePoolingAttn, MaxSigmoidAttnBlock
    from ultralytics.nn.modules.head import Detect, WorldDetect
    from ultralytics.nn.tasks import DetectionModel, WorldModel

    from medrov.model.fold import FoldedC2fAttn, fold

    _, model, _ = world
    before = model.txt_feats.clone()
    folded = fold(model)
    assert type(folded) is DetectionModel and not isinstance(folded, WorldModel)
    assert not hasattr(folded, "txt_feats")
    kinds = {type(m) for m in folded.modules()}
    assert not kinds & {C2fAttn, WorldDetect, MaxSigmoidAttnBlock, ImagePoolingAttn}
    assert sum(isinstance(m, FoldedC2fAttn) for m in folded.model) == 4  # layers 12, 15, 18, 21 of worldv2
    head = folded.model[-1]
    assert type(head) is Detect and head.nc == len(PROMPTS) and not hasattr(head, "cv4")
    assert [seq[-1].out_channels for seq in head.cv3] == [len(PROMPTS)] * 3
    assert folded.names == dict(enumerate(PROMPTS))
    assert torch.equal(model.txt_feats, before) and isinstance(model.model[-1], WorldDetect)  # source untouched


def test_detector_fold_gives_the_same_detections(world):
    """Detector.fold() on the loaded model: the predictor's final boxes (letterbox, NMS) on real images."""
    from medrov.model.build import ModelError
    from medrov.model.detector import Detector

    weights, _, prompter = world
    images = _bccd_images(2)
    det = Detector(weights, prompter, threads=2)
    det.set_vocabulary(PROMPTS)
    ref = det.predict(images, imgsz=IMGSZ, conf=0.3)
    det.fold()
    assert det.folded and type(det.yolo.model).__name__ == "DetectionModel"
    out = det.predict(images, imgsz=IMGSZ, conf=0.3)
    for r, o in zip(ref, out):
        assert len(r.scores) >= 5 and len(set(r.names)) >= 2, "too few detections to compare"
        assert len(o.scores) == len(r.scores)
        a, b = np.argsort(-r.scores, kind="stable"), np.argsort(-o.scores, kind="stable")
        np.testing.assert_allclose(o.scores[b], r.scores[a], atol=1e-4)
        for i in a:  # matched, not zipped: near-equal scores may swap places
            j = np.argmin(np.abs(o.boxes - r.boxes[i]).max(axis=1) + 10 * np.abs(o.scores - r.scores[i]))
            assert np.abs(o.boxes[j] - r.boxes[i]).max() < 1e-3 and o.names[j] == r.names[i]
    det.set_vocabulary(PROMPTS)  # the folded vocabulary itself is fine
    with pytest.raises(ModelError, match="folded into the weights"):
        det.set_vocabulary(["liver"])


def test_folded_onnx_export_matches_unfolded(world, tmp_path):
    """export_onnx(fold=True): graph without text products, ONNX Runtime close to the unfolded PyTorch model, a
    sidecar that says so and a PyTorch form that loads as a closed-set detector with the prompts as classes."""
    import onnx
    import onnxruntime as ort
    import torch

    from medrov.model.detector import Detector
    from medrov.model.export import export_onnx, read_sidecar

    weights, model, prompter = world
    size = 320  # the export is the slow part: half the side, a quarter of the graph's work
    out = export_onnx(weights, PROMPTS, prompter, tmp_path / "folded.onnx", imgsz=size, fold=True)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops & {"MatMul", "Einsum", "BatchNormalization"}, ops  # the text products and BN are gone
    meta = read_sidecar(out)
    assert meta["folded"] is True and meta["classes"] == PROMPTS and meta["pytorch"] == "folded.pt"
    x = _letterboxed(_bccd_images(1), size)
    with torch.inference_mode():
        ref = model(x)[0].numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == ref.shape
    assert ref[:, 4:].std() > 0.03, "scores too alike to test anything"
    assert np.abs(got[:, :4] - ref[:, :4]).max() < 1e-3  # another runtime, the same float32 arithmetic
    assert np.abs(got[:, 4:] - ref[:, 4:]).max() < 1e-4
    closed = Detector(tmp_path / "folded.pt", threads=2)
    assert not closed.open_vocabulary and list(closed.closed_names.values()) == PROMPTS
    closed.set_vocabulary(PROMPTS)
    assert len(closed.predict(_bccd_images(1), imgsz=size, conf=0.3)[0].scores) >= 5


def test_fold_refuses_what_cannot_fold(world, tmp_path):
    from ultralytics.nn.tasks import DetectionModel

    from medrov.model.build import ModelError, build_world
    from medrov.model.detector import Detector
    from medrov.model.export import export_onnx
    from medrov.model.fold import fold

    v1 = build_world(str(Path("yolov8n-world.yaml")), nc=2)  # YOLO-World v1: ImagePoolingAttn
    with pytest.raises(ModelError, match="ImagePoolingAttn.*image"):
        fold(v1)
    with pytest.raises(ModelError, match="not a YOLO-World model"):
        fold(DetectionModel("yolov8n.yaml", nc=2, verbose=False))
    weights, model, prompter = world
    with pytest.raises(ModelError, match="1 names but 3 prompt embeddings"):
        fold(model, names=["one"])
    det = Detector(weights, prompter, threads=2)
    with pytest.raises(ModelError, match="set_vocabulary"):
        det.fold()
    with pytest.raises(ModelError, match="overwrite the source weights"):
        export_onnx(weights, PROMPTS, prompter, weights.with_suffix(".onnx"), imgsz=64, fold=True)
    assert not weights.with_suffix(".onnx").exists()  # refused before anything was written


def test_cli_export_fold(world, tmp_path):
    """``medrov export --prompt ... --fold``: the folded ONNX, its sidecar and the PyTorch form, said in one line."""
    from typer.testing import CliRunner

    from medrov.cli import app
    from medrov.model.export import read_sidecar

    weights, _, _ = world
    out = tmp_path / "exports" / "m.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "--weights",
            str(weights),
            "-p",
            "platelets",
            "-p",
            "red blood cell",
            "--fold",
            "--out",
            str(out),
            "--imgsz",
            "64",
            "-S",
            "text.encoder=minilm",
            "-S",
            f"text.cache_dir={tmp_path / 'text-cache'}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"exported: {out} (folded; PyTorch form {out.with_suffix('.pt')})" in result.output
    meta = read_sidecar(out)
    assert meta["folded"] is True and meta["classes"] == ["platelets", "red blood cell"] and meta["imgsz"] == 64
    assert out.with_suffix(".pt").is_file()
