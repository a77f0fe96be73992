"""Inference speed: our detector unfolded and folded against plain YOLO-World and YOLOv8 of the same scale.

CPU latency per image (batch 1, one 640 x 640 RGB image, torch, OpenCV and ONNX Runtime limited to --threads
threads, default 2), untrained weights (speed does not depend on them; conf 0.25 leaves NMS nearly empty for all
alike), for each scale of --scales (default n and s):

PyTorch, through ultralytics' full predictor (letterbox, forward, NMS, results), and the bare forward pass of the
fused network that predictor built (a, f, c):
(a) ours: ``build_world(scale)`` saved as a checkpoint and run by ``medrov.model.detector.Detector`` exactly as
    ``medrov predict`` does: prompts are MiniLM embeddings of a 10-class medical vocabulary, zero-padded to
    512-d (``set_prompts``); includes the RGB -> BGR copy and the conversion to ``Detections``;
(f) ours folded: the same Detector after ``fold()`` (vocabulary folded into the weights, ``medrov.model.fold``);
(b) plain YOLO-World: ``YOLOWorld("yolov8{scale}-worldv2.yaml")`` with random normalised 512-d ``txt_feats``
    for the same number of classes (``set_classes`` needs CLIP, which is not available offline);
(c) YOLOv8: ``YOLO("yolov8{scale}.yaml")`` with as many classes as the vocabulary (the closed-set model trained
    on the same classes);
ONNX Runtime (CPU execution provider, the bare graph on a preprocessed input): (a), (f) and (c) exported by
``medrov.model.export.export_onnx`` (``fold=True`` for (f)).

All run round-robin, one image each per repetition, after --warmup untimed calls each, so slow drifts of a shared
machine hit all alike; the median of --runs is reported as ms/image and FPS with the ratio to YOLOv8 in the same
runtime (target for folded: <= 1.05x).

With a CUDA GPU it also reports, at --gpu-scale (default l) and 640 px: (a) in PyTorch fp16 through the
predictor and as the bare forward pass, and the ONNX export through ONNX Runtime's CUDA execution provider (bare
graph, when that provider is installed); ``bench/gpu_check.sh`` is the full GPU check.

    python bench/speed.py [--scales n,s] [--imgsz 640] [--runs 20] [--warmup 3] [--threads 2] [--json out.json]
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
    "liver",
    "spleen",
    "left kidney",
    "right kidney",
    "pancreas",
    "gallbladder",
    "stomach",
    "aorta",
    "lung nodule",
    "liver tumour",
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


def ours(scale: str, workdir: Path, device: str = "cpu", threads: int | None = None) -> Detector:
    """(a) build_world + a checkpoint + Detector with MiniLM prompts, as in production (weights saved once)."""
    weights = workdir / f"ours-{scale}.pt"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save({"model": build_world(scale, nc=len(VOCABULARY)), "train_args": {}}, str(weights))
    detector = Detector(
        weights, Prompter(build_encoder("minilm"), workdir / "text-cache"), device=device, threads=threads
    )
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


def yolov8(scale: str, workdir: Path, nc: int):
    """(c) stock YOLOv8 detector of the same scale with nc classes, saved as a checkpoint (for its ONNX export)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel

    weights = workdir / f"yolov8{scale}.pt"
    if not weights.is_file():
        torch.manual_seed(0)
        net = DetectionModel(f"yolov8{scale}.yaml", nc=nc, verbose=False)
        net.names = {i: name for i, name in enumerate(VOCABULARY[:nc])}
        torch.save({"model": net, "train_args": {}}, str(weights))
    return YOLO(str(weights), task="detect"), weights


def bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def interleaved(
    fns: dict[str, Callable[[], object]], runs: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
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


def ort_session(onnx_path: Path, threads: int, providers: list[str] | None = None):
    """An ONNX Runtime session limited to ``threads`` intra-op threads (one inter-op), as deployed on a small box."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # ORT's pool busy-waits between runs by default: on a shared box that steals the cores the next model needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])


def cpu_bench(args: argparse.Namespace, workdir: Path, scale: str) -> dict[str, dict[str, float]]:
    """Every model of the module docstring at one scale, interleaved; prints the table, returns the medians."""
    import cv2
    from ultralytics.utils import torch_utils

    from medrov.model.export import export_onnx

    # ultralytics' select_device() resets torch to min(8, cpus - 1) threads when a predictor is set up (1 on a
    # 2-core machine): pin it to --threads so all run with the same, asked-for, thread count
    torch_utils.NUM_THREADS = args.threads
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    image = ct_like_image(args.imgsz)
    image_bgr = bgr(image)
    det = ours(scale, workdir, threads=args.threads)
    folded = ours(scale, workdir, threads=args.threads)
    folded.fold()
    world = plain_world(scale, len(VOCABULARY))
    v8, v8_weights = yolov8(scale, workdir, len(VOCABULARY))
    kw = dict(imgsz=args.imgsz, conf=0.25, iou=0.7, device="cpu", verbose=False)
    counts: dict[str, int] = {}

    def detector_fn(key: str, detector: Detector) -> Callable[[], None]:
        def run() -> None:
            counts[key] = len(detector.predict([image], imgsz=args.imgsz, conf=0.25, iou=0.7)[0].scores)

        return run

    def yolo_fn(key: str, yolo) -> Callable[[], None]:
        def run() -> None:
            counts[key] = len(yolo.predict(image_bgr, **kw)[0].boxes)

        return run

    fns: dict[str, Callable[[], object]] = {
        "ours": detector_fn("ours", det),
        "folded": detector_fn("folded", folded),
        "world": yolo_fn("world", world),
        "v8": yolo_fn("v8", v8),
    }
    for fn in list(fns.values()):
        fn()  # builds each predictor (and its fused network)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0)
    for key, net in (
        ("ours-fwd", det.yolo.predictor.model),
        ("folded-fwd", folded.yolo.predictor.model),
        ("v8-fwd", v8.predictor.model),
    ):

        def forward(net=net) -> None:
            with torch.inference_mode():
                net(x)

        fns[key] = forward
    if not args.no_onnx:
        exports = {
            "ours-onnx": export_onnx(
                det.weights, VOCABULARY, det.prompter, workdir / f"ours-{scale}.onnx", imgsz=args.imgsz
            ),
            "folded-onnx": export_onnx(
                det.weights, VOCABULARY, det.prompter, workdir / f"folded-{scale}.onnx", imgsz=args.imgsz, fold=True
            ),
            "v8-onnx": export_onnx(v8_weights, None, None, workdir / f"yolov8{scale}.onnx", imgsz=args.imgsz),
        }
        feed = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        for key, path in exports.items():
            session = ort_session(path, args.threads)
            inputs = {session.get_inputs()[0].name: feed}
            fns[key] = lambda session=session, inputs=inputs: session.run(None, inputs)
    times = interleaved(fns, args.runs, args.warmup)
    assert torch.get_num_threads() == args.threads, torch.get_num_threads()
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}  # the least disturbed run: contention on a shared box only adds time
    labels = {
        "ours": ("PyTorch", f"ours: YOLO-World {scale} + MiniLM prompts (Detector)"),
        "folded": ("PyTorch", "ours folded (Detector.fold())"),
        "world": ("PyTorch", f"plain YOLO-World v2 {scale} (random prompts)"),
        "v8": ("PyTorch", f"YOLOv8{scale} ({len(VOCABULARY)} classes)"),
        "ours-fwd": ("forward", "ours (fused network, no pre/post-processing)"),
        "folded-fwd": ("forward", "ours folded"),
        "v8-fwd": ("forward", f"YOLOv8{scale} ({len(VOCABULARY)} classes)"),
        "ours-onnx": ("ORT", "ours (export_onnx)"),
        "folded-onnx": ("ORT", "ours folded (export_onnx fold=True)"),
        "v8-onnx": ("ORT", f"YOLOv8{scale} ({len(VOCABULARY)} classes)"),
    }
    print(
        f"\nscale {scale}: CPU, {args.threads} threads, batch 1, {args.imgsz}x{args.imgsz} image, {len(VOCABULARY)} "
        f"prompts, {args.runs} interleaved runs after {args.warmup} warm-up (median and min)"
    )
    print(
        f"{'runtime':<8} {'model':<46} {'median ms':>9} {'FPS':>7} {'vs YOLOv8':>10} {'min ms':>8} {'vs YOLOv8':>10} {'boxes':>6}"  # noqa: E501
    )
    for key in fns:
        runtime, label = labels[key]
        base = {"ORT": "v8-onnx", "forward": "v8-fwd"}.get(runtime, "v8")
        boxes = f"{counts[key]:6d}" if key in counts else f"{'-':>6}"
        print(
            f"{runtime:<8} {label:<46} {med[key] * 1000:9.1f} {1 / med[key]:7.2f} {med[key] / med[base]:9.3f}x "
            f"{low[key] * 1000:8.1f} {low[key] / low[base]:9.3f}x {boxes}"
        )
    ratios = {"pytorch": med["folded"] / med["v8"], "forward": med["folded-fwd"] / med["v8-fwd"]}
    if "folded-onnx" in med:
        ratios["onnx"] = med["folded-onnx"] / med["v8-onnx"]
    print(
        "folded / YOLOv8 (median) = "
        + ", ".join(f"{k} {r:.3f}x" for k, r in ratios.items())
        + f" (target <= 1.05x: {'met' if max(ratios.values()) <= 1.05 else 'NOT met'}); unfolded / YOLOv8 = "
        f"{med['ours'] / med['v8']:.3f}x"
    )
    return {
        "ms": {k: v * 1000 for k, v in med.items()},
        "min_ms": {k: v * 1000 for k, v in low.items()},
        "vs_yolov8": ratios,
        "boxes": dict(counts),
    }


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
            print(
                f"ONNX Runtime CUDA skipped: providers are {ort.get_available_providers()} (onnxruntime-gpu not installed)"  # noqa: E501
            )
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
    parser.add_argument("--scales", default="n,s", help="comma-separated scales (n, s, m, l, x)")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-onnx", action="store_true", help="PyTorch only (no exports, no ONNX Runtime)")
    parser.add_argument("--json", type=Path, help="also write the medians and ratios here")
    parser.add_argument("--gpu-scale", default="l", choices=["n", "s", "m", "l", "x"])
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU figures even when CUDA is available")
    args = parser.parse_args()
    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    if not scales or any(s not in {"n", "s", "m", "l", "x"} for s in scales):
        parser.error(f"--scales: expected letters of n, s, m, l, x, got {args.scales!r}")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    results = {}
    with tempfile.TemporaryDirectory(prefix="medrov-speed-") as tmp:
        for scale in scales:
            results[scale] = cpu_bench(args, Path(tmp), scale)
        if torch.cuda.is_available() and not args.no_gpu:
            gpu_bench(args, Path(tmp))
    if args.json:
        import json

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"imgsz": args.imgsz, "threads": args.threads, "runs": args.runs, "cpu": results}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
