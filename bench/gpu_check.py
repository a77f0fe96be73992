"""One prepared GPU check: FPS folded / unfolded / YOLOv8, a short training with the mechanisms, the DDP launch.

Run through ``bench/gpu_check.sh`` (it installs carried wheels first and bounds the wall time). Sections, each
guarded: a failure is recorded with its reason and the next section runs.

* ``fps``: batch 1 at --imgsz (640) for scales n, s, l: PyTorch fp16 bare forward (CUDA-synchronised) of the
  unfolded worldv2 (10 random normalised prompts), the folded one (``medrov.model.fold``) and YOLOv8 of the same
  scale with 10 classes; ONNX Runtime with its CUDA execution provider when installed (fp32 graphs from
  ``export_onnx``, host input); TensorRT fp16 engines of folded and YOLOv8 when ``tensorrt`` imports.
* ``train``: --steps training batches of our trainer (``medrov.model.train.train``, the demo profile on the
  embedded demo sources, a tiny CLIP text encoder built in code so that nothing is downloaded), once with the
  mechanisms (pseudo-labels + image-feature negatives) and once without: median step time, the teacher's
  overhead ratio (on / off), AMP as the trainer decided, peak GPU memory.
* ``ddp``: the same trainer class through ultralytics' DDP launcher (``generate_ddp_command``:
  cloudpickled trainer, ``torch.distributed.run``) on every visible GPU (world size 1 with one GPU).

``--dry-run`` runs all of it on the CPU at tiny sizes (scale n, 64 px, 2 timed runs, 3 steps) so that a test keeps
the script from rotting. Writes ``gpu_check.json`` and ``gpu_check.md`` (a table) under --out.

    python bench/gpu_check.py [--dry-run] [--out bench/out/gpu_check] [--steps 50] [--budget-s 450]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medrov.model.ultra import prepare_ultralytics  # noqa: E402

prepare_ultralytics()

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_PROMPTS = 10


class _Enough(Exception):
    """Raised from a callback once the asked-for number of training steps is done."""


class RandomPrompter:
    """What ``export_onnx`` needs from a prompter: names -> normalised 512-d embeddings (speed ignores them)."""

    def __call__(self, names):
        emb = torch.randn(len(names), 512, generator=torch.Generator().manual_seed(0))
        return emb / emb.norm(dim=-1, keepdim=True)

    def describe(self) -> dict[str, Any]:
        return {"spec": "random", "identity": "random-512"}


def _guard(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """results[key] = fn(), or {"error": reason} if it raised; a check goes on after a failed part."""
    start = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as exc:  # noqa: BLE001 - a check reports and goes on
        results[key] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=3)}
    print(f"[gpu_check] {key}: {time.perf_counter() - start:.1f} s", flush=True)


def environment(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    import ultralytics

    info["ultralytics"] = ultralytics.__version__
    try:
        import onnxruntime as ort

        info["onnxruntime"], info["ort_providers"] = ort.__version__, ort.get_available_providers()
    except ImportError as exc:
        info["onnxruntime"] = f"missing ({exc})"
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError:
        info["tensorrt"] = None
    return info


def _timed(fn: Callable[[], Any], runs: int, warmup: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``runs`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _models(scale: str, workdir: Path) -> dict[str, Path]:
    """Checkpoints of (unfolded, folded, yolov8) at ``scale`` with N_PROMPTS classes."""
    from ultralytics.nn.tasks import DetectionModel

    from medrov.model.build import build_world, set_prompts
    from medrov.model.fold import fold, save_folded

    names = [f"class{i}" for i in range(N_PROMPTS)]
    torch.manual_seed(0)
    world = build_world(scale, nc=N_PROMPTS)
    set_prompts(world, names, RandomPrompter()(names))
    paths = {
        "unfolded": workdir / f"world-{scale}.pt",
        "folded": workdir / f"folded-{scale}.pt",
        "yolov8": workdir / f"yolov8{scale}.pt",
    }
    torch.save({"model": world, "train_args": {}}, str(paths["unfolded"]))
    save_folded(fold(world), paths["folded"])
    v8 = DetectionModel(f"yolov8{scale}.yaml", nc=N_PROMPTS, verbose=False)
    v8.names = dict(enumerate(names))
    torch.save({"model": v8, "train_args": {}}, str(paths["yolov8"]))
    return paths


def fps(scale: str, args: argparse.Namespace, device: str, workdir: Path) -> dict[str, Any]:
    """FPS of the three models at one scale in every runtime available (see the module docstring)."""
    from ultralytics.nn.tasks import load_checkpoint

    from medrov.model.export import export_onnx

    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    paths = _models(scale, workdir)
    out: dict[str, Any] = {}
    x = torch.rand(1, 3, args.imgsz, args.imgsz, device=device)
    torch_key = "pytorch_fp16" if cuda else "pytorch_fp32_cpu"
    out[torch_key] = {}
    for name, path in paths.items():
        net, _ = load_checkpoint(str(path), device=device)
        net = net.fuse(verbose=False).eval()
        inp = x.half() if cuda else x
        if cuda:
            net = net.half()
        with torch.inference_mode():
            t = _timed(lambda: net(inp), args.runs, args.warmup, sync)
        out[torch_key][name] = {"ms": t * 1000, "fps": 1 / t}
    try:
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if cuda else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            out["onnxruntime"] = {"skipped": f"{provider} not in {ort.get_available_providers()}"}
        else:
            out["onnxruntime"] = {"provider": provider}
            feed = np.random.default_rng(0).random((1, 3, args.imgsz, args.imgsz), dtype=np.float32)
            onnx_of = {
                "unfolded": export_onnx(
                    paths["unfolded"],
                    [f"class{i}" for i in range(N_PROMPTS)],
                    RandomPrompter(),
                    workdir / f"world-{scale}.onnx",
                    imgsz=args.imgsz,
                ),
                "folded": export_onnx(paths["folded"], None, None, workdir / f"folded-{scale}.onnx", imgsz=args.imgsz),
                "yolov8": export_onnx(paths["yolov8"], None, None, workdir / f"yolov8{scale}.onnx", imgsz=args.imgsz),
            }
            for name, path in onnx_of.items():
                session = ort.InferenceSession(str(path), providers=[provider, "CPUExecutionProvider"])
                if session.get_providers()[0] != provider:
                    out["onnxruntime"][name] = {"skipped": f"session fell back to {session.get_providers()}"}
                    continue
                inputs = {session.get_inputs()[0].name: feed}
                t = _timed(lambda: session.run(None, inputs), args.runs, args.warmup, lambda: None)
                out["onnxruntime"][name] = {"ms": t * 1000, "fps": 1 / t}
    except ImportError as exc:
        out["onnxruntime"] = {"skipped": f"onnxruntime missing ({exc})"}
    out["tensorrt"] = _tensorrt(paths, args, cuda, sync)
    return out


def _tensorrt(paths: dict[str, Path], args: argparse.Namespace, cuda: bool, sync) -> dict[str, Any]:
    """TensorRT fp16 engines (folded, yolov8) through ultralytics' exporter, bare engine timed via AutoBackend."""
    if not cuda:
        return {"skipped": "no CUDA device"}
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return {"skipped": "tensorrt not installed"}
    from ultralytics import YOLO
    from ultralytics.nn.autobackend import AutoBackend

    res: dict[str, Any] = {}
    for name in ("folded", "yolov8"):
        engine = YOLO(str(paths[name]), task="detect").export(
            format="engine", half=True, imgsz=args.imgsz, device=0, batch=1, verbose=False
        )
        backend = AutoBackend(str(engine), device=torch.device("cuda:0"), fp16=True)
        x = torch.rand(1, 3, args.imgsz, args.imgsz, device="cuda:0").half()
        t = _timed(lambda: backend(x), args.runs, args.warmup, sync)
        res[name] = {"ms": t * 1000, "fps": 1 / t}
    return res


def _training_data(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """(omnis.yaml of the converted demo sources, tiny CLIP folder), built here: nothing is downloaded."""
    from medrov.config import load_params
    from medrov.data import convert, demo
    from tests.tiny_models import TINY_DEMO, build_tiny_clip

    sizes = TINY_DEMO if args.dry_run else []
    params = load_params(ROOT / "params.yaml", [*sizes, "data.workers=1"])
    data_root = workdir / "data"
    demo.generate(params.demo, data_root / "raw" / "synthetic")
    (data_root / "sources.yaml").write_text(
        (ROOT / "data" / "sources.yaml").read_text().replace("{shared}", str(workdir / "no-shared-data"))
    )
    convert.run(params.data, sources_file=data_root / "sources.yaml", out_dir=data_root / "omnis", progress=False)
    return data_root / "omnis" / "omnis.yaml", build_tiny_clip(workdir / "tiny-clip")


def _train_overrides(
    args: argparse.Namespace, device: str, workdir: Path, data: Path, clip: Path, tag: str
) -> list[str]:
    dev = "0" if device.startswith("cuda") else "cpu"
    return [
        f"train.data={data}",
        f"train.project={workdir / 'runs' / tag}",
        "train.profile=demo",
        f"train.profiles.demo.device={dev}",
        f"train.profiles.demo.imgsz={64 if args.dry_run else 640}",
        f"train.profiles.demo.batch={4 if args.dry_run else 16}",
        "train.profiles.demo.workers=0",
        "train.profiles.demo.epochs=100",
        "train.profiles.demo.extra={plots: false, amp: true, val: false}",
        f"text.encoder=local-dir:{clip}",
        "text.fallback=null",
        f"text.cache_dir={workdir / 'text-cache'}",
        "tracking.enabled=false",
        "pseudo.conf_c=0.05",  # an untrained teacher is never confident: let it decide
    ]


def _train_steps(
    args: argparse.Namespace, device: str, workdir: Path, data: Path, clip: Path, mechanisms: bool
) -> dict[str, Any]:
    """--steps batches of medrov's own training entry point; median step seconds and peak GPU memory."""
    from medrov.config import load_params
    from medrov.model.train import train

    tag = "mechanisms" if mechanisms else "plain"
    extra = [] if mechanisms else ["pseudo.labels=false", "pseudo.negatives=false"]
    params = load_params(ROOT / "params.yaml", _train_overrides(args, device, workdir, data, clip, tag) + extra)
    steps: list[float] = []
    state: dict[str, Any] = {}

    def start(trainer):
        state["t"] = time.perf_counter()

    def end(trainer):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        steps.append(time.perf_counter() - state["t"])
        state["amp"] = bool(getattr(trainer, "amp", False))
        state["mechanisms"] = trainer._mechanisms.describe() if getattr(trainer, "_mechanisms", None) else None
        if len(steps) >= args.steps:
            import copy

            state["model"] = copy.deepcopy(trainer.ema.ema if trainer.ema else trainer.model).float().eval()
            raise _Enough

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        train(params, callbacks={"on_train_batch_start": [start], "on_train_batch_end": [end]})
    except _Enough:
        pass
    if len(steps) < args.steps:
        raise RuntimeError(f"training stopped after {len(steps)} of {args.steps} steps")
    timed = steps[1:] if len(steps) > 1 else steps  # the first step pays for lazy set-up
    return {
        "steps": len(steps),
        "median_step_s": statistics.median(timed),
        "amp": state.get("amp"),
        "mechanisms": state.get("mechanisms"),
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
        "fold_parity": _fold_parity(state["model"], data, clip, workdir, args.imgsz) if mechanisms else None,
    }


def _fold_parity(model, data: Path, clip: Path, workdir: Path, imgsz: int) -> dict[str, Any]:
    """The trained model with the dataset's class names as prompts, folded: largest gaps to the unfolded model on
    the first training images (boxes in px, scores), in float32 on the training device."""
    import cv2
    import yaml
    from ultralytics.data.augment import LetterBox

    from medrov.model.build import Prompter, prompt_name, set_prompts
    from medrov.model.fold import fold
    from medrov.text import build_encoder

    meta = yaml.safe_load(data.read_text())
    names = [prompt_name(str(v)) for _, v in sorted(dict(meta["names"]).items())]
    set_prompts(model, names, Prompter(build_encoder(f"local-dir:{clip}"), workdir / "text-cache")(names))
    folded = fold(model)
    folders = sorted(d for d in (data.parent / "images").iterdir() if d.is_dir())
    files = [f for d in folders for f in sorted(d.iterdir())[:2] if f.suffix.lower() in {".png", ".jpg"}][:8]
    box = LetterBox((imgsz, imgsz), auto=False)
    ims = np.stack([box(image=cv2.imread(str(f)))[..., ::-1].transpose(2, 0, 1) / 255.0 for f in files])
    x = torch.from_numpy(np.ascontiguousarray(ims)).float().to(next(model.parameters()).device)
    with torch.inference_mode():
        ref, out = model(x)[0], folded(x)[0]
    return {
        "images": len(files),
        "classes": len(names),
        "box_max_px": float((out[:, :4] - ref[:, :4]).abs().max()),
        "score_max": float((out[:, 4:] - ref[:, 4:]).abs().max()),
        "score_std": float(ref[:, 4:].std()),
    }


def training(args: argparse.Namespace, device: str, workdir: Path) -> dict[str, Any]:
    data, clip = _training_data(args, workdir)
    on = _train_steps(args, device, workdir, data, clip, mechanisms=True)
    off = _train_steps(args, device, workdir, data, clip, mechanisms=False)
    return {
        "with_mechanisms": on,
        "without": off,
        "teacher_overhead_ratio": on["median_step_s"] / off["median_step_s"],
        "data": str(data),
    }


def ddp(args: argparse.Namespace, device: str, workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Our trainer class through ultralytics' DDP launcher on every visible GPU (or the CPU in a dry run)."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_command

    from medrov.config import load_params
    from medrov.model.train import _trainer_class, train_args

    data = workdir / "data" / "omnis" / "omnis.yaml"
    clip = workdir / "tiny-clip"
    if not data.is_file():
        data, clip = _training_data(args, workdir)
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    dev = ",".join(str(i) for i in range(gpus)) if gpus else "cpu"
    overrides = _train_overrides(args, device, workdir, data, clip, "ddp") + [
        f"train.profiles.demo.device={dev}",
        "train.profiles.demo.epochs=1",
    ]
    params = load_params(ROOT / "params.yaml", overrides)
    targs = train_args(params)
    trainer = _trainer_class(params, targs["data"], closed_set=False)(overrides=targs)
    trainer.world_size = max(gpus, 1)  # the launcher also runs one worker, which is the point with one GPU
    Path(trainer.save_dir).mkdir(parents=True, exist_ok=True)
    cmd, file = generate_ddp_command(trainer)
    try:
        run = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
    finally:
        ddp_cleanup(trainer, file)
    weights = sorted(Path(trainer.save_dir).glob("weights/*.pt"))
    return {
        "world_size": trainer.world_size,
        "device": dev,
        "trainer_class": type(trainer).__name__,
        "rc": run.returncode,
        "weights": [p.name for p in weights],
        "log_tail": (run.stdout + run.stderr)[-1500:],
    }


def table(results: dict[str, Any]) -> str:
    """Markdown: FPS per scale, runtime and model, folded / YOLOv8 latency; the training and DDP lines."""
    lines = [
        f"# GPU check ({'dry run, CPU' if results['dry_run'] else results['env'].get('gpu', 'GPU')}), "
        f"{results['imgsz']} px, batch 1",
        "",
        "| scale | runtime | unfolded FPS | folded FPS | YOLOv8 FPS | folded/YOLOv8 latency |",
        "|---|---|---|---|---|---|",
    ]
    for scale, res in results.get("fps", {}).items():
        if "error" in res:
            lines.append(f"| {scale} | - | error: {res['error'][:80]} | | | |")
            continue
        for runtime, vals in res.items():
            if not isinstance(vals, dict) or "skipped" in vals:
                why = vals.get("skipped") if isinstance(vals, dict) else vals
                lines.append(f"| {scale} | {runtime} | skipped: {why} | | | |")
                continue
            cell = {k: (f"{v['fps']:.1f}" if "fps" in v else "-") for k, v in vals.items() if isinstance(v, dict)}
            ratio = (
                f"{vals['folded']['ms'] / vals['yolov8']['ms']:.3f}x"
                if "ms" in vals.get("folded", {}) and "ms" in vals.get("yolov8", {})
                else "-"
            )
            lines.append(
                f"| {scale} | {runtime} | {cell.get('unfolded', '-')} | {cell.get('folded', '-')} | "
                f"{cell.get('yolov8', '-')} | {ratio} |"
            )
    tr = results.get("train", {})
    if "error" in tr:
        lines += ["", f"train: error: {tr['error']}"]
    elif tr:
        on, off = tr["with_mechanisms"], tr["without"]
        mem = f", peak GPU memory {on['peak_gpu_mem_gib']:.2f} GiB" if on.get("peak_gpu_mem_gib") is not None else ""
        lines += [
            "",
            f"train ({on['steps']} steps each): {on['median_step_s'] * 1000:.0f} ms/step with the "
            f"mechanisms, {off['median_step_s'] * 1000:.0f} without: teacher overhead "
            f"{tr['teacher_overhead_ratio']:.2f}x; "
            f"AMP {on['amp']}{mem}",
        ]
        fp = on.get("fold_parity") or {}
        if fp:
            lines += [
                "",
                f"fold parity on the trained model ({fp['images']} images, {fp['classes']} prompts): boxes "
                f"{fp['box_max_px']:.2e} px, scores {fp['score_max']:.2e} (score std {fp['score_std']:.3f})",
            ]
    dd = results.get("ddp", {})
    if "error" in dd:
        lines += ["", f"ddp: error: {dd['error']}"]
    elif dd:
        lines += [
            "",
            f"ddp ({dd['trainer_class']} through ultralytics' launcher): world size {dd['world_size']}, "
            f"rc {dd['rc']}, weights {dd['weights']}",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks that the script works")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check")
    parser.add_argument("--scales", default=None, help="comma-separated (default n,s,l; n in a dry run)")
    parser.add_argument("--imgsz", type=int, default=None, help="default 640 (64 in a dry run)")
    parser.add_argument("--runs", type=int, default=None, help="timed calls per model (default 100; 2 in a dry run)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 50; 3 in a dry run)")
    parser.add_argument("--budget-s", type=float, default=450, help="later sections are skipped past this")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: fps, train, ddp")
    args = parser.parse_args()
    dry = args.dry_run
    scales = (args.scales or ("n" if dry else "n,s,l")).split(",")
    args.imgsz = args.imgsz or (64 if dry else 640)
    args.runs = args.runs or (2 if dry else 100)
    args.warmup = args.warmup if args.warmup is not None else (1 if dry else 10)
    args.steps = args.steps or (3 if dry else 50)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if not dry and not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    device = "cpu" if dry else "cuda:0"
    if dry:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    began = time.perf_counter()
    results: dict[str, Any] = {
        "dry_run": dry,
        "imgsz": args.imgsz,
        "runs": args.runs,
        "steps": args.steps,
        "env": environment(device),
        "fps": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        results["wall_s"] = round(time.perf_counter() - began, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / "gpu_check.md").write_text(table(results))

    def left() -> float:
        return args.budget_s - (time.perf_counter() - began)

    with tempfile.TemporaryDirectory(prefix="medrov-gpu-check-") as tmp:
        workdir = Path(tmp)
        if "fps" not in skip:
            for scale in scales:
                if left() < 60 and not dry:
                    results["fps"][scale] = {"error": "skipped: time budget spent"}
                    continue
                _guard(results["fps"], scale, lambda: fps(scale, args, device, workdir))
                write()
        if "train" not in skip:
            _guard(results, "train", lambda: training(args, device, workdir))
            write()
        if "ddp" not in skip:
            if left() < 60 and not dry:
                results["ddp"] = {"error": "skipped: time budget spent"}
            else:
                _guard(results, "ddp", lambda: ddp(args, device, workdir, max(left(), 120)))
        write()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
