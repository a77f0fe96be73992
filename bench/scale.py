"""Omnis at scale: N synthetic slices converted, validated, versioned with DVC and loaded, each against its floor.

Generates four sources that convert into N slices (half CT volumes of 50 slices in NIfTI, half 2D PNGs with a
CSV of boxes), then times, each against a floor measured in the same run on the same data:

- conversion with the process pool (``data.workers=2``) and on a local 2-worker Ray, vs reading the sources and
  writing the PNGs with no processing on 2 processes (and, with ``--ray-per-item``, Ray with one task per input);
- ``validate`` (every image decoded, and a 10 % pixel sample) vs decoding every image once on 2 processes;
- DVC for both layouts, ``files`` (a PNG + label file per image) and ``shards`` (``data.layout: shards``):
  ``dvc add``, no-op ``dvc status``, ``dvc push`` and ``dvc pull`` to a local remote, re-adding after one changed
  image, vs ``tar`` + copy and untar of the same folder; for shards also packing and materialising;
- the training data loader (ultralytics' YOLO-World dataset, mosaic, 2 workers) for one epoch over up to
  ``--loader-n`` train images, vs decoding the same images in a plain loop.

It prints a table and a linear projection of every time to 600K images. Timings on a shared machine are noisy:
compare the ratios, which are measured in the same run.

    python bench/scale.py [--n 20000] [--size 192] [--work /work/scale-tmp] [--ray-per-item]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov.config import load_params  # noqa: E402
from medrov.data import convert, layout, validate  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402

SLICES_PER_VOLUME = 50
OMNIS = 600_000
ROWS: list[dict] = []


def row(step: str, seconds: float, floor_name: str = "", floor_s: float | None = None, note: str = "") -> None:
    ROWS.append({"step": step, "s": seconds, "floor": floor_name, "floor_s": floor_s, "note": note})
    ratio = f"{seconds / floor_s:5.2f}x" if floor_s else ""
    print(f"  {step:<44} {seconds:8.2f} s  {floor_name:<28} {floor_s or 0:8.2f} s  {ratio}  {note}", flush=True)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


# ---------------------------------------------------------------- sources


def _ct_volume(args: tuple[Path, int, int, int]) -> None:
    import nibabel as nib

    root, index, size, seed = args
    rng = np.random.default_rng(seed * 100_003 + index)
    x, y = np.ogrid[:size, :size]
    ct = np.full((size, size, SLICES_PER_VOLUME), 40, dtype=np.int16)
    ct += rng.normal(0, 10, ct.shape).astype(np.int16)  # soft tissue with a little noise: PNGs of realistic size
    label = np.zeros(ct.shape, dtype=np.uint8)
    for cls, (cx, cy, r) in enumerate(((0.35, 0.5, 0.15), (0.7, 0.4, 0.08)), start=1):
        cx, cy = cx + rng.uniform(-0.05, 0.05), cy + rng.uniform(-0.05, 0.05)
        disc = (x - cx * size) ** 2 + (y - cy * size) ** 2 <= (r * size) ** 2
        label[disc] = cls  # every slice holds objects: every slice is written
        ct[disc] += 80 * cls
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), str(root / "images" / f"vol_{index:05d}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(root / "labels" / f"vol_{index:05d}.nii.gz"))


def _xray_images(args: tuple[Path, int, int, int, int]) -> list[list]:
    root, start, stop, size, seed = args
    rows = []
    yy, xx = np.mgrid[:size, :size]
    base = (60 + 80 * yy / size).astype(np.float32)
    for i in range(start, stop):
        rng = np.random.default_rng(seed * 100_003 + i)
        img = base + rng.normal(0, 3, base.shape)
        cx, cy, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size, rng.uniform(0.05, 0.12) * size
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r**2] += 90
        name = f"img_{i:06d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / name, compress_level=1)
        rows.append([name, "lung mass", round(cx - r, 1), round(cy - r, 1), round(cx + r, 1), round(cy + r, 1)])
    return rows


def make_sources(raw: Path, n: int, size: int, seed: int = 0) -> Path:
    """Four sources converting into about ``n`` slices; returns the sources file."""
    n_ct = (n // 2) // SLICES_PER_VOLUME * SLICES_PER_VOLUME
    volumes = n_ct // SLICES_PER_VOLUME
    per_xray = (n - n_ct) // 2
    specs = []
    with ProcessPoolExecutor(2) as pool:
        for k, count in enumerate((volumes - volumes // 2, volumes // 2)):
            root = raw / f"BenchCT{k}"
            (root / "images").mkdir(parents=True)
            (root / "labels").mkdir(parents=True)
            list(pool.map(_ct_volume, [(root, i, size, seed + k) for i in range(count)], chunksize=8))
            specs.append(
                {
                    "name": f"BenchCT{k}",
                    "root": str(root),
                    "modality": "ct",
                    "format": "volume",
                    "images": "images/*.nii.gz",
                    "labels": "labels/{name}",
                    "label_map": {1: "liver", 2: "spleen"},
                }
            )
        for k in range(2):
            root = raw / f"BenchXray{k}"
            (root / "images").mkdir(parents=True)
            chunks = [(root, s, min(s + 500, per_xray), size, seed + 10 + k) for s in range(0, per_xray, 500)]
            with open(root / "boxes.csv", "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
                for rows in pool.map(_xray_images, chunks):
                    writer.writerows(rows)
            specs.append(
                {
                    "name": f"BenchXray{k}",
                    "root": str(root),
                    "modality": "xray",
                    "format": "csv",
                    "images": "images",
                    "annotations": "boxes.csv",
                    "classes": ["lung mass"],
                }
            )
    sources = raw.parent / "sources.yaml"
    sources.write_text(yaml.safe_dump({"sources": specs}, sort_keys=False))
    return sources


# ---------------------------------------------------------------- floors


def _floor_input(args: tuple[str, str, str]) -> int:
    """Read one input and write its PNG(s) with no processing (what any converter pays)."""
    import nibabel as nib

    kind, path, out = args
    if kind == "volume":
        array = np.asanyarray(nib.load(path).dataobj)
        for k in range(array.shape[2]):
            Image.fromarray(array[:, :, k].astype(np.uint8)).save(f"{out}_{k}.png", compress_level=1)
        return array.shape[2]
    with Image.open(path) as img:
        img.load()
        img.save(f"{out}.png", compress_level=1)
    return 1


def floor_convert(raw: Path, out: Path, workers: int) -> int:
    out.mkdir(parents=True)
    jobs = [("volume", str(p), str(out / p.stem)) for p in sorted(raw.glob("BenchCT*/images/*.nii.gz"))]
    jobs += [("image", str(p), str(out / p.stem)) for p in sorted(raw.glob("BenchXray*/images/*.png"))]
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_floor_input, jobs, chunksize=16))


def _decode(paths: list[str]) -> int:
    for path in paths:
        with Image.open(path) as img:
            img.load()
    return len(paths)


def floor_decode(files: list[str], workers: int) -> int:
    chunks = [files[i : i + 512] for i in range(0, len(files), 512)]
    if workers <= 1:
        return sum(map(_decode, chunks))
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_decode, chunks))


def tar_copy(folder: Path, dest: Path) -> None:
    """``tar cf`` of the folder straight into the remote folder: the floor of a push."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "cf", str(dest), "-C", str(folder.parent), folder.name], check=True)


def untar(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "xf", str(archive), "-C", str(dest)], check=True)


# ---------------------------------------------------------------- DVC


def dvc(repo: Path, *args: str) -> float:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
    return took


def dvc_layout(name: str, repo: Path, remote: Path, change) -> dict[str, float]:
    """``dvc add``, no-op status, push, pull (cache and data removed first), and re-add after ``change()``."""
    data = repo / "data" / "omnis"
    files = sum(1 for p in data.rglob("*") if p.is_file())
    dvc(repo, "init", "--no-scm", "-q")
    dvc(repo, "remote", "add", "-d", "local", str(remote))
    t = {"files": files, "add": dvc(repo, "add", "-q", "data/omnis")}
    dvc(repo, "status", "-q")  # DVC's first status after an add fills its state database
    t["status"] = min(dvc(repo, "status"), dvc(repo, "status"))
    t["push"] = dvc(repo, "push", "-q")
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    t["pull"] = dvc(repo, "pull", "-q")
    touched = change()
    t["readd"] = dvc(repo, "add", "-q", "data/omnis")
    print(f"  dvc {name}: {files} files {json.dumps({k: round(v, 2) for k, v in t.items()})}", flush=True)
    t["changed"] = touched
    return t


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- loader


def loader_epoch(data_dir: Path, limit: int, imgsz: int, workers: int) -> tuple[float, float, int]:
    """(label cache scan s, one epoch s, images) of ultralytics' YOLO-World training dataset and loader."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    spec = yaml.safe_load((data_dir / "omnis.yaml").read_text())
    images = [line.strip() for line in (data_dir / "train.txt").read_text().splitlines() if line.strip()][:limit]
    listing = data_dir / "bench_train.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    data = {"names": {int(k): v for k, v in spec["names"].items()}, "nc": spec["nc"], "channels": 3}
    cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "batch": 16, "workers": workers, "cache": False})
    start = time.perf_counter()
    dataset = build_yolo_dataset(cfg, str(listing), 16, data, mode="train", multi_modal=True)
    scan = time.perf_counter() - start
    loader = build_dataloader(dataset, 16, workers, shuffle=True, pin_memory=False, device="cpu")
    start = time.perf_counter()
    seen = 0
    for i, batch in enumerate(loader):
        seen += len(batch["im_file"])
        if i + 1 >= len(loader):  # InfiniteDataLoader: one epoch is len(loader) batches
            break
    epoch = time.perf_counter() - start
    listing.unlink()
    return scan, epoch, seen


def _cv2_decode(paths: list[str]) -> int:
    import cv2

    for path in paths:
        cv2.imread(path)
    return len(paths)


# ---------------------------------------------------------------- main


def compare_conversion(base: Path, sources: Path, params, per_item: bool, repeats: int, keep: bool) -> float:
    """Floor, process pool and a running local Ray (batched; optionally one task per input) on the same sources,
    interleaved ``repeats`` times (best of each): a drift of the shared machine hits all alike. Returns the pool's
    time; with ``keep`` its output stays in ``base / "pool"``."""
    import ray

    from medrov.env import init_local_ray

    best: dict[str, float] = {}
    images = 0
    t_start, _ = timed(init_local_ray, 2, log_to_driver=False)  # a cluster is up before work is sent to it
    ray_params = params.data.model_copy(update={"ray_address": "local"})
    try:
        for rep in range(repeats):
            runs = [("floor", lambda: floor_convert(base / "raw", base / "floor", 2))]
            runs.append(("pool", lambda: convert.run(params.data, sources, base / "pool", 2, False)["images"]))
            runs.append(("ray", lambda: convert.run(ray_params, sources, base / "ray", 2, False)["images"]))
            if per_item:
                runs.append(("ray1", lambda: _per_item(ray_params, sources, base / "ray1")))
            for name, fn in runs:
                for folder in ("floor", "pool", "ray", "ray1"):
                    if not (keep and folder == "pool" and name != "pool"):
                        shutil.rmtree(base / folder, ignore_errors=True)
                t, count = timed(fn)
                assert images in (0, count), (name, images, count)
                images = count
                best[name] = min(best.get(name, float("inf")), t)
                print(f"    {name} run {rep + 1}: {t:.1f} s", flush=True)
    finally:
        ray.shutdown()
    for folder in ("floor", "ray", "ray1") + (() if keep else ("pool",)):
        shutil.rmtree(base / folder, ignore_errors=True)
    of = f"{images} images, best of {repeats}"
    row("convert, process pool (2 workers)", best["pool"], "read sources + write PNGs", best["floor"], of)
    row(
        "convert, local Ray (2 workers, batched)",
        best["ray"],
        "process pool",
        best["pool"],
        f"Ray start {t_start:.1f} s",
    )
    if per_item:
        row("convert, local Ray (one task per input)", best["ray1"], "process pool", best["pool"])
    return best["pool"]


def _per_item(ray_params, sources: Path, out: Path) -> int:
    saved = convert.RAY_MAX_BATCH
    convert.RAY_MAX_BATCH = 1
    try:
        return convert.run(ray_params, sources, out, 2, False)["images"]
    finally:
        convert.RAY_MAX_BATCH = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="slices (images) in the converted dataset")
    parser.add_argument("--size", type=int, default=192, help="image side in pixels")
    parser.add_argument("--work", type=Path, default=Path("/work/scale-tmp"), help="scratch folder (removed)")
    parser.add_argument("--loader-n", type=int, default=10_000, help="train images the loader epoch reads")
    parser.add_argument("--ray-per-item", action="store_true", help="also convert on Ray with one task per input")
    parser.add_argument(
        "--convert-n",
        type=int,
        help="slices of the conversion comparisons (default: --n; 0: none, only the pool's time at N)",
    )
    parser.add_argument("--convert-repeats", type=int, default=1, help="interleaved runs of floor, pool and Ray")
    parser.add_argument("--serial-validate", action="store_true", help="also validate with workers: 1")
    parser.add_argument("--only-convert", action="store_true", help="stop after the conversion timings")
    parser.add_argument("--skip-files-dvc", action="store_true", help="skip DVC on the files layout (slow)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    args.convert_n = args.n if args.convert_n is None else args.convert_n
    apply_offline_env()
    os.environ.setdefault("YOLO_CONFIG_DIR", str(args.work / "ultralytics"))
    free = shutil.disk_usage(args.work.parent if not args.work.exists() else args.work).free
    need = args.n * 25_000 * (args.size / 192) ** 2 * 8  # ~8 copies of the converted images at peak
    if free < need:
        raise SystemExit(f"{args.work}: {free / 1e9:.0f} GB free, this run may need {need / 1e9:.0f} GB")
    if args.work.exists():
        raise SystemExit(f"{args.work} exists: remove it or pass another --work")
    work = args.work
    params = load_params(overrides=["data.workers=2", "data.png_compress_level=1"])
    try:
        print(f"bench/scale.py: N={args.n} slices of {args.size} px in {work}", flush=True)
        if 0 < args.convert_n < args.n:
            # the conversion comparisons on a smaller set of the same kind (their ratios do not depend on N)
            t, sub_sources = timed(make_sources, work / "sub" / "raw", args.convert_n, args.size)
            compare_conversion(work / "sub", sub_sources, params, args.ray_per_item, args.convert_repeats, keep=False)
            shutil.rmtree(work / "sub")
        t, sources = timed(make_sources, work / "raw", args.n, args.size)
        print(f"  generated the sources in {t:.1f} s ({folder_bytes(work / 'raw') / 1e9:.2f} GB)", flush=True)
        omnis = work / "pool"
        if args.convert_n < args.n:
            t_pool, summary = timed(convert.run, params.data, sources, omnis, 2, False)
            assert summary["quarantined"] == 0
            row("convert, process pool (2 workers), all N", t_pool, "", None, f"{summary['images']} images")
        else:
            t_pool = compare_conversion(work, sources, params, args.ray_per_item, args.convert_repeats, keep=True)
        n = int(pd.read_parquet(omnis / "manifest.parquet", columns=["image"]).shape[0])
        size_files = size_shards = 0
        if not args.only_convert:
            t_reuse, again = timed(convert.run, params.data, sources, omnis, 2, False)
            assert again["reused"] == again["total"]
            row("convert again, nothing changed (reuse)", t_reuse, "convert", t_pool)

            # validation
            images = [str(omnis / p) for p in pd.read_parquet(omnis / "manifest.parquet")["image"]]
            t_dec, _ = timed(floor_decode, images, 2)
            import great_expectations  # noqa: F401  (its import, seconds, is no part of a validation)

            vparams = params.validate_.model_copy(update={"report": None, "workers": 2})
            t_tables, _ = timed(validate.run, vparams.model_copy(update={"check_pixels": False}), omnis)
            row("validate, no pixel checks (headers + tables)", t_tables, "decode every image (2 procs)", t_dec)
            t_val, result = timed(validate.run, vparams, omnis)
            assert result["success"], validate.summary_lines(result)
            row("validate, every image decoded (2 workers)", t_val, "decode every image (2 procs)", t_dec)
            if args.serial_validate:
                t_val1, _ = timed(validate.run, vparams.model_copy(update={"workers": 1}), omnis)
                row("validate, every image decoded (workers: 1)", t_val1, "decode every image (2 procs)", t_dec)
            t_vs, sampled = timed(validate.run, vparams.model_copy(update={"pixel_sample": 0.1}), omnis)
            row(
                "validate, pixel_sample 0.1 (2 workers)",
                t_vs,
                "decode every image (2 procs)",
                t_dec,
                f"{sampled['pixels_decoded']} decoded; vs convert {t_vs / t_pool:.2f}x",
            )

            # DVC, shards layout: pack from the converted folder (what convert does with data.layout: shards)
            size_files = folder_bytes(omnis)
            repo = work / "dvc-shards"
            sharded = repo / "data" / "omnis"
            manifest = pd.read_parquet(omnis / "manifest.parquet")
            rows = list(zip(manifest["source"], manifest["split"], manifest["image"], manifest["label"]))
            tar_s, _ = timed(tar_copy, omnis, work / "floor-remote" / "omnis.tar")
            untar_s, _ = timed(untar, work / "floor-remote" / "omnis.tar", work / "floor-pulled")
            shutil.rmtree(work / "floor-pulled")
            shutil.rmtree(work / "floor-remote")
            t_pack, packed = timed(layout.pack, omnis, sharded, rows, params.data.shard_bytes)
            row("shards: pack (first time)", t_pack, "tar + copy", tar_s, f"{packed['shards']} shards")
            shutil.copy2(omnis / "convert_summary.json", sharded / "convert_summary.json")
            size_shards = folder_bytes(sharded)
            # the per-image folder of the sharded dataset is the converted one: move it where layout expects it
            os.replace(omnis, layout.files_dir(sharded))
            work_files = layout.files_dir(sharded)

            def change_shards() -> str:
                victim = next((work_files / "images" / "BenchXray0").iterdir())
                Image.open(victim).rotate(90).save(victim, compress_level=1)
                t_repack, stats = timed(layout.pack, work_files, sharded, rows, params.data.shard_bytes)
                row(
                    "shards: re-pack after one changed image",
                    t_repack,
                    "",
                    None,
                    f"{stats['shards_written']} rewritten",
                )
                return f"{stats['shards_written']} of {stats['shards']} shards rewritten"

            shards_t = dvc_layout("shards", repo, work / "remote-shards", change_shards)
            shutil.rmtree(work_files)  # what a fresh clone has after `dvc pull`: shards only
            t_mat, _ = timed(layout.readable, sharded)
            row("shards: materialise after pull (untar all)", t_mat, "untar", untar_s)
            for key, what in (("add", "dvc add"), ("status", "no-op dvc status"), ("push", "dvc push")):
                floor_name, floor_s = ("tar + copy", tar_s) if key == "push" else ("", None)
                row(f"shards: {what}", shards_t[key], floor_name, floor_s, f"{shards_t['files']} files")
            row("shards: dvc pull", shards_t["pull"], "untar", untar_s)
            row("shards: dvc pull + materialise", shards_t["pull"] + t_mat, "untar", untar_s)
            row("shards: dvc add after one changed image", shards_t["readd"], "", None, shards_t["changed"])
            shutil.rmtree(work / "remote-shards")
            shutil.rmtree(repo / ".dvc" / "cache")

            # loader (on the materialised folder)
            data_dir = layout.files_dir(sharded)
            t_scan, t_epoch, seen = loader_epoch(data_dir, args.loader_n, 160, 2)
            listed = [str(data_dir / p) for p in (data_dir / "train.txt").read_text().split()][: args.loader_n]
            t_cv = timed(lambda: sum(_cv2_decode(listed[i : i + 512]) for i in range(0, len(listed), 512)))[0]
            row(
                "loader: one epoch, 2 workers (img/s)",
                t_epoch,
                "cv2.imread loop, 1 process",
                t_cv * seen / max(1, len(listed)),
                f"{seen / t_epoch:.0f} img/s vs {len(listed) / t_cv:.0f}; label scan {t_scan:.1f} s",
            )

            # DVC, files layout (the current default): the same folder as one DVC directory of per-image files
            if not args.skip_files_dvc:
                repo = work / "dvc-files"
                (repo / "data").mkdir(parents=True)
                os.replace(data_dir, repo / "data" / "omnis")
                for stale in (layout.MARKER, ".locks"):
                    target = repo / "data" / "omnis" / stale
                    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)

                def change_files() -> str:
                    victim = next((repo / "data" / "omnis" / "images" / "BenchXray0").iterdir())
                    Image.open(victim).rotate(90).save(victim, compress_level=1)
                    return "1 image changed"

                files_t = dvc_layout("files", repo, work / "remote-files", change_files)
                for key, what in (("add", "dvc add"), ("status", "no-op dvc status"), ("push", "dvc push")):
                    floor_name, floor_s = ("tar + copy", tar_s) if key == "push" else ("", None)
                    row(f"files: {what}", files_t[key], floor_name, floor_s, f"{files_t['files']} files")
                row("files: dvc pull", files_t["pull"], "untar", untar_s)
                row("files: dvc add after one changed image", files_t["readd"], "", None, files_t["changed"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    scale = OMNIS / n
    print(
        f"\nN = {n} images ({size_files / 1e9:.2f} GB as files, {size_shards / 1e9:.2f} GB as shards); "
        f"projection x{scale:.1f} to {OMNIS} images (linear)"
    )
    print("| step | seconds | floor | floor s | ratio | at 600K (min) | note |")
    print("|---|---|---|---|---|---|---|")
    for r in ROWS:
        ratio = f"{r['s'] / r['floor_s']:.2f}" if r["floor_s"] else ""
        floor_s = f"{r['floor_s']:.1f}" if r["floor_s"] else ""
        print(
            f"| {r['step']} | {r['s']:.1f} | {r['floor']} | {floor_s} | {ratio} | {r['s'] * scale / 60:.1f} | "
            f"{r['note']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"n": n, "rows": ROWS}, indent=1))


if __name__ == "__main__":
    main()
