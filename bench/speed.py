"""Inference speed: our open-vocabulary detector against plain YOLO-World and YOLOv8 of the same scale.

CPU latency per image (batch 1, one 640 x 640 RGB image, torch and OpenCV limited to --threads threads, default
2) through ultralytics' full predictor (letterbox, forward, NMS, results), untrained weights (speed does not
depend on them; conf 0.25 leaves NMS nearly empty for all three alike):

(a) ours: ``build_world(scale)`` saved as a checkpoint and run by ``medrov.model.detector.Detector`` exactly as
    ``medrov predict`` does: prompts are MiniLM embeddings of a 10-class medical vocabulary, zero-padded to
    512-d (``set_prompts``); includes the RGB -> BGR copy and the conversion to ``Detections``;
(b) plain YOLO-World: ``YOLOWorld("yolov8{scale}-worldv2.yaml")`` with random normalised 512-d ``txt_feats``
    for the same number of classes (``set_classes`` needs CLIP, which is not available offline);
(c) YOLOv8: ``YOLO("yolov8{scale}.yaml")`` (80 COCO classes: the closed-set baseline).

The three run round-robin, one image each per repetition, after --warmup untimed calls each, so slow drifts of a
shared machine hit all three alike; the median of --runs is reported as ms/image and FPS, with the ratio to
plain YOLO-World (target <= 1.05x) and to YOLOv8.

With a CUDA GPU it also reports, at --gpu-scale (default l) and 640 px: (a) in PyTorch fp16 through the
predictor and as the bare forward pass, and the ONNX export (``medrov.model.export.export_onnx``, vocabulary
baked in, fp32) through ONNX Runtime's CUDA execution provider (bare graph, when that provider is installed).

    python bench/speed.py [--scale n] [--imgsz 640] [--runs 20] [--warmup 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov.model.ultra import prepare_ultralytics  # noqa: E402

prepare_ultralytics()

import torch  # noqa: E402

from medrov.model.build import Prompter, build_world, model_source  # noqa: E402
from medrov.model.detector import Detector  # noqa: E402
from medrov.text import build_encoder  # noqa: E402

VOCABULARY = [
    "liver", "spleen", "left kidney", "right kidney", "pancreas",
    "gallbladder", "stomach", "aorta", "lung nodule", "liver tumour",
]


def ct_like_image(size: int, seed: int = 0) -> np.ndarray:
    """An RGB uint8 slice-like image: a body ellipse with a few brighter organs and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    img = np.full((size, size), 10.0)
    img[((x - 0.5) / 0.42) ** 2 + ((y - 0.5) / 0.32) ** 2 < 1] = 90
    for cx, cy, r, v in [(0.35, 0.5, 0.12, 150), (0.68, 0.45, 0.06, 130), (0.6, 0.62, 0.04, 170)]:
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = v
    img += rng.normal(0, 12, img.shape)
    grey = np.clip(img, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def random_prompts(n: int, dim: int = 512, seed: int = 0) -> torch.Tensor:
    emb = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return emb / emb.norm(dim=-1, keepdim=True)


def ours(scale: str, workdir: Path, device: str = "cpu") -> Detector:
    """(a) build_world + a checkpoint + Detector with MiniLM prompts, as in production."""
    weights = workdir / f"ours-{scale}.pt"
    torch.manual_seed(0)
    torch.save({"model": build_world(scale, nc=len(VOCABULARY)), "train_args": {}}, str(weights))
    detector = Detector(weights, Prompter(build_encoder("minilm"), workdir / "text-cache"), device=device)
    detector.set_vocabulary(VOCABULARY)
    return detector


def plain_world(scale: str, n: int):
    """(b) stock YOLO-World with random prompts for n classes (what set_classes would set, without CLIP)."""
    from ultralytics import YOLOWorld

    torch.manual_seed(0)
    yolo = YOLOWorld(model_source(scale))
    yolo.model.txt_feats = random_prompts(n).reshape(1, n, -1)
    yolo.model.model[-1].nc = n
    yolo.model.names = {i: f"class{i}" for i in range(n)}
    return yolo


def yolov8(scale: str):
    """(c) stock YOLOv8 detector of the same scale."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    return YOLO(f"yolov8{scale}.yaml")


def bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int, sync: Callable[[], None] = lambda: None) -> dict[str, list[float]]:
    """Round-robin: every repetition times each function once (seconds)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def cpu_bench(args: argparse.Namespace, workdir: Path) -> None:
    import cv2
    from ultralytics.utils import torch_utils

    # ultralytics' select_device() resets torch to min(8, cpus - 1) threads when a predictor is set up (1 on a
    # 2-core machine): pin it to --threads so all three run with the same, asked-for, thread count
    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    image = ct_like_image(args.imgsz)
    image_bgr = bgr(image)
    det = ours(args.scale, workdir)
    world = plain_world(args.scale, len(VOCABULARY))
    v8 = yolov8(args.scale)
    kw = dict(imgsz=args.imgsz, conf=0.25, iou=0.7, device="cpu", verbose=False)
    counts: dict[str, int] = {}

    def run_ours():
        counts["ours"] = len(det.predict([image], imgsz=args.imgsz, conf=0.25, iou=0.7)[0].scores)

    def run_world():
        counts["world"] = len(world.predict(image_bgr, **kw)[0].boxes)

    def run_v8():
        counts["v8"] = len(v8.predict(image_bgr, **kw)[0].boxes)

    times = interleaved({"ours": run_ours, "world": run_world, "v8": run_v8}, args.runs, args.warmup)
    assert torch.get_num_threads() == args.threads, torch.get_num_threads()
    med = {k: statistics.median(v) for k, v in times.items()}
    labels = {
        "ours": f"ours: YOLO-World {args.scale} + MiniLM prompts (Detector)",
        "world": f"plain YOLO-World v2 {args.scale} (random prompts)",
        "v8": f"YOLOv8{args.scale} (80 classes)",
    }
    print(f"CPU, {torch.get_num_threads()} torch threads, batch 1, {args.imgsz}x{args.imgsz} image, "
          f"{len(VOCABULARY)} prompts, median of {args.runs} interleaved runs after {args.warmup} warm-up")
    print(f"{'model':<52} {'ms/image':>9} {'FPS':>7} {'vs YOLO-World':>14} {'vs YOLOv8':>10} {'boxes':>6}")
    for key in ("ours", "world", "v8"):
        ms = med[key] * 1000
        print(f"{labels[key]:<52} {ms:9.1f} {1 / med[key]:7.2f} {med[key] / med['world']:13.3f}x "
              f"{med[key] / med['v8']:9.3f}x {counts[key]:6d}")
    ratio = med["ours"] / med["world"]
    spread = {k: (min(v) * 1000, max(v) * 1000) for k, v in times.items()}
    print(f"ours / plain YOLO-World = {ratio:.3f}x (target <= 1.05x: {'met' if ratio <= 1.05 else 'NOT met'}); "
          "min-max ms: " + ", ".join(f"{k} {a:.0f}-{b:.0f}" for k, (a, b) in spread.items()))


def gpu_bench(args: argparse.Namespace, workdir: Path) -> None:
    """fp16 PyTorch and ONNX Runtime CUDA at --gpu-scale; every part is guarded and reports why it was skipped."""
    scale, imgsz = args.gpu_scale, args.imgsz
    print(f"\nGPU: {torch.cuda.get_device_name(0)}, scale {scale}, {imgsz}x{imgsz}, batch 1, median of {args.runs}")
    image = ct_like_image(imgsz)
    sync = torch.cuda.synchronize
    try:
        det = ours(scale, workdir, device="cuda:0")
        kw = dict(imgsz=imgsz, conf=0.25, iou=0.7, device="cuda:0", half=True, verbose=False)
        image_bgr = bgr(image)
        times = interleaved({"predictor": lambda: det.yolo.predict(image_bgr, **kw)}, args.runs, args.warmup, sync)
        t = statistics.median(times["predictor"])
        print(f"ours, PyTorch fp16, full predictor (letterbox + forward + NMS): {t * 1000:7.2f} ms  {1 / t:7.1f} FPS")
        net = det.yolo.predictor.model  # the fused fp16 AutoBackend the predictor built
        x = torch.rand(1, 3, imgsz, imgsz, device="cuda:0").half()
        with torch.inference_mode():
            times = interleaved({"forward": lambda: net(x)}, args.runs, args.warmup, sync)
        t = statistics.median(times["forward"])
        print(f"ours, PyTorch fp16, forward pass only:                          {t * 1000:7.2f} ms  {1 / t:7.1f} FPS")
    except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
        print(f"PyTorch fp16 on GPU skipped: {type(exc).__name__}: {exc}")
        return
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            print(f"ONNX Runtime CUDA skipped: providers are {ort.get_available_providers()} (onnxruntime-gpu not installed)")
            return
        from medrov.model.export import export_onnx

        onnx = export_onnx(det.weights, VOCABULARY, det.prompter, workdir / f"ours-{scale}.onnx", imgsz=imgsz)
        session = ort.InferenceSession(str(onnx), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            print(f"ONNX Runtime CUDA skipped: session fell back to {session.get_providers()}")
            return
        feed = {session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)}
        times = interleaved({"onnx": lambda: session.run(None, feed)}, args.runs, args.warmup)
        t = statistics.median(times["onnx"])
        print(f"ours, ONNX fp32, ONNX Runtime CUDA EP, graph only (host I/O):  {t * 1000:7.2f} ms  {1 / t:7.1f} FPS")
    except Exception as exc:  # noqa: BLE001
        print(f"ONNX Runtime CUDA skipped: {type(exc).__name__}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="n", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-scale", default="l", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU figures even when CUDA is available")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    with tempfile.TemporaryDirectory(prefix="medrov-speed-") as tmp:
        cpu_bench(args, Path(tmp))
        if torch.cuda.is_available() and not args.no_gpu:
            gpu_bench(args, Path(tmp))


if __name__ == "__main__":
    main()
