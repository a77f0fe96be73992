"""``convert``: raw sources -> the Omnis dataset (images, YOLO labels, manifest, boxes, presence, quarantine).

Parallel (process pool, or Ray when ``data.ray_address`` is set), idempotent (an item whose inputs, source
settings and converter version are unchanged and whose outputs are all on disk is not converted again) and
atomic (files are written under a temporary name and renamed; an item's state file is written last, so a
killed run leaves no half-written image that a later run would trust).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml
from tqdm.auto import tqdm

from medrov import paths
from medrov.catalog import Vocabulary
from medrov.config import DataParams
from medrov.data import layout
from medrov.data.adapters import Item, Sample, Skipped
from medrov.data.formats import ADAPTERS
from medrov.data.presence import CLASS_SET_SEPARATOR, IMAGE_PRESENCE, image_presence_matrix, presence_matrix, row_name
from medrov.data.sources import ResolvedSource, resolve_sources, sources_vocabulary
from medrov.data.splits import SPLITS, split_of
from medrov.errors import ConfigError, EmptySource, OutputBusy, SourceReadError

log = logging.getLogger("medrov.convert")

# bump when the output of an unchanged input changes, so reruns reconvert everything
CONVERTER_VERSION = 1
STATE_DIR = ".state"
TMP_SUFFIX = ".partial"
LOCK_DIR = ".locks"
# settings that change pixels or boxes; the others (workers, split fractions...) do not force a reconversion
_CONTENT_PARAMS = (
    "boxes",
    "connectivity",
    "min_box_pixels",
    "skip_empty_slices",
    "keep_empty_images",
    "ct_window",
    "mri_percentiles",
    "png_compress_level",
)


def _tmp_name(path: Path) -> Path:
    """A temporary name no other process or thread uses (two writers never share a ``.partial`` file)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _write_png(path: Path, pixels, compress_level: int) -> None:
    from PIL import Image

    tmp = _tmp_name(path)
    Image.fromarray(pixels).save(tmp, format="PNG", compress_level=compress_level)
    os.replace(tmp, path)


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Hash of the code that decides pixels and boxes: editing a reader or converter reconverts everything."""
    digest = hashlib.blake2b(digest_size=16)
    for folder in ("io", "data"):
        for file in sorted((paths.PACKAGE_DIR / folder).glob("*.py")):
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _hash_inputs(item: Item, source: ResolvedSource, params: DataParams) -> str:
    digest = hashlib.blake2b(digest_size=16)
    settings = {
        "version": CONVERTER_VERSION,
        "code": _code_fingerprint(),
        "spec": item.spec,
        "source": source.spec.model_dump(mode="json", exclude={"split", "optional", "presence", "presence_group"}),
        "modality": source.modality,
        "class_map": source.class_map,
        "params": {k: getattr(params, k) for k in _CONTENT_PARAMS},
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    # inputs by (name, size, mtime) as make and DVC's state cache do: a touched file is reconverted, and a
    # rerun does not pay for reading every input twice
    for name in item.inputs:
        path = Path(name)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            try:
                info = file.stat()
                digest.update(f"{file}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            except OSError:
                digest.update(f"{file}\0<missing>\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _state_path(out: Path, item: Item) -> Path:
    return out / STATE_DIR / item.source / f"{item.item_id}.json"


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _outputs_present(out: Path, state: dict[str, Any]) -> bool:
    return all((out / r["image"]).is_file() and (out / r["label"]).is_file() for r in state["records"])


def _remove_outputs(out: Path, state: dict[str, Any] | None, keep: set[str] = frozenset()) -> None:
    for record in (state or {}).get("records", []):
        for key in ("image", "label"):
            if record[key] not in keep:
                (out / record[key]).unlink(missing_ok=True)


def _write_sample(
    out: Path, source: ResolvedSource, item: Item, sample: Sample, class_ids: dict[str, int], compress_level: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    stem = f"{item.item_id}{sample.suffix}"
    image_rel = f"images/{source.name}/{stem}.png"
    label_rel = f"labels/{source.name}/{stem}.txt"
    height, width = sample.image.shape[:2]
    lines, boxes = [], []
    for box in sample.boxes:
        # the table holds exactly what the label file says (6 decimals), so the two can be compared exactly
        xc, yc, bw, bh = (float(f"{v:.6f}") for v in box.to_yolo(width, height))
        cid = class_ids[box.label]
        lines.append(f"{cid} {xc:.6f} {yc:.6f} {bw:.6f} {bh:.6f}")
        boxes.append(
            {
                "image": image_rel,
                "source": source.name,
                "class_id": cid,
                "class_name": box.label,
                "x_center": xc,
                "y_center": yc,
                "width": bw,
                "height": bh,
                "x0": box.x0,
                "y0": box.y0,
                "x1": box.x1,
                "y1": box.y1,
            }
        )
    _write_png(out / image_rel, sample.image, compress_level)
    _atomic_write_text(out / label_rel, "\n".join(lines) + ("\n" if lines else ""))
    sx, sy, sz = sample.spacing
    record = {
        "image": image_rel,
        "label": label_rel,
        "source": source.name,
        "modality": source.modality,
        "item_id": item.item_id,
        "volume_id": f"{source.name}/{item.item_id}",
        "patient_id": f"{source.name}/{item.group}",
        "slice_index": sample.slice_index,
        "width": width,
        "height": height,
        "channels": 1 if sample.image.ndim == 2 else int(sample.image.shape[2]),
        "spacing_x": sx,
        "spacing_y": sy,
        "spacing_z": sz,
        "n_boxes": len(sample.boxes),
        "input": item.inputs[0],
    }
    return record, boxes


def process_item(
    source: ResolvedSource, item: Item, params: DataParams, out: Path, class_ids: dict[str, int]
) -> dict[str, Any]:
    """Convert one item (in a worker), or reuse its earlier conversion, or quarantine it with a reason."""
    fingerprint = _hash_inputs(item, source, params)
    state_file = _state_path(out, item)
    previous = _load_state(state_file)
    if previous and previous.get("fingerprint") == fingerprint and _outputs_present(out, previous):
        return {**previous, "status": "reused"}
    base = {"source": source.name, "item_id": item.item_id, "inputs": item.inputs, "group": item.group}
    try:
        _, load = ADAPTERS[source.format]
        samples, notes = load(source, item, params)
        (out / "images" / source.name).mkdir(parents=True, exist_ok=True)
        (out / "labels" / source.name).mkdir(parents=True, exist_ok=True)
        records, boxes = [], []
        for sample in samples:
            record, sample_boxes = _write_sample(out, source, item, sample, class_ids, params.png_compress_level)
            records.append(record)
            boxes.extend(sample_boxes)
    except SourceReadError as exc:
        _remove_outputs(out, previous)
        state_file.unlink(missing_ok=True)
        return {**base, "status": "quarantined", "reason": str(exc)}
    except Exception as exc:  # a converter bug must not stop the run nor lose the input
        _remove_outputs(out, previous)
        state_file.unlink(missing_ok=True)
        detail = traceback.format_exc(limit=3).strip().splitlines()[-1]
        return {
            **base,
            "status": "quarantined",
            "reason": f"{item.inputs[0]}: internal error {type(exc).__name__}: {exc} ({detail})",
        }
    stats: Counter[str] = Counter()
    for sample in samples:
        stats.update(sample.stats)
    state = {
        **base,
        "fingerprint": fingerprint,
        "records": records,
        "boxes": boxes,
        "notes": notes,
        "stats": dict(stats),
    }
    _remove_outputs(out, previous, keep={r[k] for r in records for k in ("image", "label")})
    state_file.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(state_file, json.dumps(state))
    return {**state, "status": "converted"}


def _run_jobs(jobs: list[tuple], workers: int, ray_address: str | None) -> Iterator[dict[str, Any]]:
    if ray_address:
        yield from _run_jobs_ray(jobs, ray_address, workers)
    elif workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield process_item(*job)
    else:
        yield from _run_pool(jobs, workers)


def _worker_init(parent_pid: int, death_signal: bool) -> None:
    """Pool worker set-up: exit when the parent dies (a SIGKILLed convert must not leave workers behind)."""
    import signal
    import threading

    if death_signal and sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:  # the portable fallback: the parent is gone when we are re-parented
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="medrov-parent-watch", daemon=True).start()


def _pool(workers: int) -> ProcessPoolExecutor:
    import threading

    # the parent-death signal follows the thread that forks: use it only when that is the main thread
    main = threading.current_thread() is threading.main_thread()
    return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(os.getpid(), main))


def _run_pool(jobs: list[tuple], workers: int) -> Iterator[dict[str, Any]]:
    """Process pool that survives a worker death: the input that killed it is quarantined, the pool rebuilt.

    A dead worker breaks the whole executor and every unfinished future. The jobs the pool had handed out (the
    first ``workers + 1`` unfinished ones, as it hands them out in order) are suspects: each is re-run alone in
    its own process, which names the culprit by its exit; the rest go to a fresh pool.
    """
    from concurrent.futures.process import BrokenProcessPool

    pending = list(range(len(jobs)))
    while pending:
        finished, broken = set(), False
        with _pool(workers) as pool:
            futures = {pool.submit(process_item, *jobs[i]): i for i in pending}
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                finished.add(futures[future])
                yield outcome
        if not broken:
            return
        unfinished = [i for i in pending if i not in finished]
        suspects, pending = unfinished[: workers + 1], unfinished[workers + 1 :]
        log.warning(
            "a convert worker died: re-running %d input(s) one by one to find which, then a fresh pool", len(suspects)
        )
        for i in suspects:
            yield _run_alone(jobs[i])


def _child_entry(conn, job: tuple, parent_pid: int) -> None:
    _worker_init(parent_pid, True)
    conn.send(process_item(*job))
    conn.close()


def _run_alone(job: tuple) -> dict[str, Any]:
    """Run one job in its own process; if that process dies, the job's input is quarantined saying how."""
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("fork") if sys.platform.startswith("linux") else multiprocessing.get_context()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_entry, args=(send, job, os.getpid()), daemon=True)
    process.start()
    send.close()
    try:
        outcome = receive.recv()
    except EOFError:
        outcome = None
    process.join()
    if outcome is not None:
        return outcome
    code = process.exitcode
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else "?"
        how = f"signal {-code} ({name})" + (", out of memory?" if -code == signal.SIGKILL else "")
    else:
        how = f"exit code {code}"
    return _died(job, how)


def _died(job: tuple, how: str) -> dict[str, Any]:
    """The quarantine outcome of a job whose worker died; its earlier outputs and state are removed."""
    source, item, _params, out, _ = job
    state_file = _state_path(out, item)
    _remove_outputs(out, _load_state(state_file))
    state_file.unlink(missing_ok=True)
    base = {"source": source.name, "item_id": item.item_id, "inputs": item.inputs, "group": item.group}
    return {**base, "status": "quarantined", "reason": f"{item.inputs[0]}: worker died: {how}"}


# Ray tasks carry several inputs each: one task per 2D image cost more in scheduling and in pickling the shared
# source spec than converting it (bench/scale.py); a few tasks per worker still balance the load
RAY_TASKS_PER_WORKER = 16
RAY_MAX_BATCH = 64


def _ray_batch_size(n_jobs: int, workers: int) -> int:
    return max(1, min(RAY_MAX_BATCH, n_jobs // max(1, workers * RAY_TASKS_PER_WORKER)))


def _process_batch(jobs: list[tuple]) -> list[dict[str, Any]]:
    """Convert several inputs in one Ray task (the jobs share their source and params: pickled once)."""
    return [process_item(*job) for job in jobs]


def _run_jobs_ray(jobs: list[tuple], address: str, workers: int) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("data.ray_address is set but Ray is not installed: pip install 'ray[tune]'") from exc
    owns = not ray.is_initialized()
    if owns:
        if address == "local":
            from medrov.env import init_local_ray

            init_local_ray(workers, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    log.info("converting on Ray (%s): %s", address, ray.cluster_resources())
    try:
        remote = ray.remote(max_retries=0)(_process_batch)  # a retry would only kill another worker
        size = _ray_batch_size(len(jobs), workers)
        batch_of = {}
        for i in range(0, len(jobs), size):
            batch = jobs[i : i + size]
            batch_of[remote.remote(batch)] = batch
        pending = list(batch_of)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield from ray.get(ref)
                except (
                    ray.exceptions.WorkerCrashedError,
                    ray.exceptions.RayTaskError,
                    ray.exceptions.OutOfMemoryError,
                ) as exc:
                    batch = batch_of[ref]
                    if len(batch) == 1:
                        # a dead or failing Ray worker is that input's fault, like a dead pool worker
                        yield _died(batch[0], f"Ray worker failed ({type(exc).__name__}), out of memory?")
                        continue
                    # which input of the batch killed it is unknown: each one again as a task of its own
                    log.warning("a Ray convert task failed: re-running its %d input(s) one by one", len(batch))
                    for job in batch:
                        single = remote.remote([job])
                        batch_of[single] = [job]
                        pending.append(single)
    finally:
        if owns:
            ray.shutdown()


@contextmanager
def writer_lock(out: Path, names: list[str], whole: bool) -> Iterator[None]:
    """Hold the locks of ``out``: one per source written, plus the dataset's own for a run that writes the tables.

    Filtered runs on disjoint sources may share the folder; any overlap, or two full runs, fails at once.

    Raises:
        OutputBusy: another process holds one of the locks; the message names it (pid, host, command, since).
    """
    from filelock import FileLock, Timeout

    folder = out / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    me = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv)[:120]})"  # noqa: E501
    wanted = (["dataset"] if whole else []) + [f"source-{n}" for n in sorted(names)]
    with ExitStack() as stack:
        for name in wanted:
            lock = FileLock(str(folder / f"{name}.lock"), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                holder = (
                    (folder / f"{name}.holder").read_text().strip()
                    if (folder / f"{name}.holder").is_file()
                    else "unknown process"
                )
                what = "the dataset" if name == "dataset" else f"source {name[len('source-') :]}"
                raise OutputBusy(f"another convert is writing {what} here: {holder}", out) from None
            stack.callback(lock.release)
            holder = folder / f"{name}.holder"
            holder.write_text(me + "\n")
            # removed on release: the dataset folder (a DVC output) stays byte-identical between runs
            stack.callback(holder.unlink, missing_ok=True)
        yield


def _clean_partials(out: Path, only: set[str] | None = None) -> int:
    removed = 0
    roots = (
        [out] if only is None else [out / folder / name for folder in ("images", "labels", STATE_DIR) for name in only]
    )
    for root in roots:
        for tmp in root.rglob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


REASON_LIMIT = 300


def cap_reason(reason: str, limit: int = REASON_LIMIT) -> str:
    """A quarantine reason short enough for any CSV reader; a longer one is cut and logged whole."""
    reason = " ".join(str(reason).split())  # one line: a newline in a reason would split its CSV row for naive readers
    if len(reason) <= limit:
        return reason
    log.warning("quarantine reason cut to %d characters, in full: %s", limit, reason)
    tail = f" ... [{len(reason)} characters, full text in the log]"
    return reason[: limit - len(tail)] + tail


def printable(name: str) -> str:
    """A path as text that every writer accepts: undecodable bytes in file names become \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _enumerate(source: ResolvedSource) -> tuple[list[Item], list[Skipped], bool]:
    """The items of a source and the entries skipped; the flag says the source root itself could not be listed."""
    enumerate_items, _ = ADAPTERS[source.format]
    try:
        items, skipped = enumerate_items(source)
    except SourceReadError as exc:
        return [], [Skipped(exc.path or str(source.root), str(exc))], True
    except Exception as exc:  # an adapter bug must not stop the other sources
        return (
            [],
            [
                Skipped(
                    str(source.root),
                    f"cannot list the inputs of source {source.name}: internal error {type(exc).__name__}: {exc}",
                )
            ],
            True,
        )
    skipped = [dataclasses.replace(s, input=printable(s.input), reason=printable(s.reason)) for s in skipped]
    unique, seen = [], set()
    for item in items:
        if printable(" ".join(item.inputs)) != " ".join(item.inputs):
            skipped.append(Skipped(printable(item.inputs[0]), "file name is not valid UTF-8: rename it"))
            continue
        if item.item_id in seen:
            skipped.append(Skipped(item.inputs[0], f"duplicate item id {item.item_id!r} in source {source.name}"))
            continue
        seen.add(item.item_id)
        unique.append(item)
    return unique, skipped, False


def _earlier_rows(out: Path, source: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Manifest and box rows of ``source`` from the previous run whose files are still on disk (a dropped source keeps them)."""  # noqa: E501
    try:
        manifest = pd.read_parquet(out / "manifest.parquet")
        boxes = pd.read_parquet(out / "boxes.parquet")
    except (OSError, ValueError):
        return [], []
    manifest = manifest[manifest["source"] == source]
    present = [(out / i).is_file() and (out / lab).is_file() for i, lab in zip(manifest["image"], manifest["label"])]
    manifest = manifest[present] if len(manifest) else manifest
    boxes = boxes[boxes["image"].isin(set(manifest["image"]))].drop(columns=["novel", "split"], errors="ignore")
    return manifest.to_dict("records"), boxes.to_dict("records")


def _remove_orphans(
    out: Path, keep: set[str], live_states: set[Path], only: set[str] | None = None, protected: set[str] = frozenset()
) -> int:
    """Delete files of no current item; the folders of ``protected`` (dropped) sources are never touched."""
    removed = 0

    def roots(folder: str) -> list[Path]:
        top = out / folder
        names = sorted(only) if only is not None else sorted(p.name for p in top.glob("*")) if top.is_dir() else []
        return [top / name for name in names if name not in protected]

    for root in (r for folder in ("images", "labels") for r in roots(folder)):
        for file in root.rglob("*") if root.is_dir() else [root] if root.is_file() else []:
            if file.is_file() and file.relative_to(out).as_posix() not in keep:
                file.unlink()
                removed += 1
    for state_root in roots(STATE_DIR):
        for file in (
            state_root.rglob("*.json") if state_root.is_dir() else [state_root] if state_root.suffix == ".json" else []
        ):
            if file not in live_states:
                file.unlink()
    for folder in ("images", "labels", STATE_DIR):
        root = out / folder
        for sub in sorted(root.glob("*"), reverse=True) if root.is_dir() else []:
            if (
                sub.is_dir()
                and (only is None or sub.name in only)
                and sub.name not in protected
                and not any(sub.iterdir())
            ):
                sub.rmdir()
    return removed


def dataset_yaml(vocab: Vocabulary, sources: list[ResolvedSource]) -> dict[str, Any]:
    """The ultralytics dataset file: split lists, every vocabulary class (prompt = name/synonyms), base/novel.

    The sources file's ``vocabulary:`` block is recorded as applied (``vocabulary``), so the dataset and every
    model trained on it know their classes and modalities (:func:`medrov.catalog.dataset_vocabulary`).
    """
    spec = {
        "train": "train.txt",
        "val": "val.txt",
        "test": "test.txt",
        "nc": len(vocab),
        "names": {c.id: c.prompt for c in vocab.classes},
        "base": [c.id for c in vocab.classes if c.split == "base"],
        "novel": [c.id for c in vocab.classes if c.split == "novel"],
        "sources": {s.name: s.modality for s in sources},
    }
    if vocab.user:
        spec["vocabulary"] = vocab.user
    return spec


def source_names(params: DataParams, sources_file: str | Path | None = None) -> list[str]:
    """Names of the sources that ``run`` would convert (optional sources that are absent are left out)."""
    sources, _ = resolve_sources(sources_file or params.sources)
    return [s.name for s in sources]


def _item_classes(source: ResolvedSource, item: Item, outcome: dict[str, Any], vocab: Vocabulary) -> set[str]:
    """The classes an item has labels for: every class it has a box of, and for mask files every class with a
    mask (an empty mask still says the class was annotated and is absent); a mask token outside the label map
    counts when it names a vocabulary class (tokens discovered from file names)."""
    classes = {str(b["class_name"]) for b in outcome.get("boxes", [])}
    spec = item.spec or {}
    targets = spec.get("targets") or {}  # mask2d: each mask token's class (discovered tokens included)
    for native in spec.get("masks", {}):
        target = targets.get(native, source.class_map.get(native, native))
        cls = vocab.lookup(target) if target is not None else None
        if cls is not None:
            classes.add(cls.name)
    return classes


def _presence_groups(
    sources: list[ResolvedSource],
    items: dict[tuple[str, str], Item],
    outcomes: list[dict[str, Any]],
    vocab: Vocabulary,
) -> dict[tuple[str, str], set[str]]:
    """(source, item id) -> the class set of its presence group, for the converted items of per-image sources.

    Without ``presence_group`` each item is its own group; with it, items whose input path (relative to the
    source root) gives the same match (named group ``group``, else group 1, else the whole match) share the union
    of their classes, and an item that does not match stays alone.
    """
    by_name = {s.name: s for s in sources}
    own: dict[tuple[str, str], set[str]] = {}
    group_of: dict[tuple[str, str], tuple[str, str]] = {}
    for outcome in outcomes:
        source = by_name.get(outcome["source"])
        if source is None or not source.spec.per_image or outcome["status"] == "quarantined":
            continue
        key = (source.name, outcome["item_id"])
        item = items[key]
        own[key] = _item_classes(source, item, outcome, vocab)
        group_of[key] = key
        pattern = source.spec.presence_group
        if pattern:
            path = Path(item.inputs[0])
            rel = path.relative_to(source.root).as_posix() if path.is_relative_to(source.root) else path.name
            match = re.search(pattern, rel)
            if match:
                value = match.groupdict().get("group") or match.group(1 if match.groups() else 0)
                group_of[key] = (source.name, f"group:{value}")
    union: dict[tuple[str, str], set[str]] = {}
    for key, group in group_of.items():
        union.setdefault(group, set()).update(own[key])
    return {key: union[group] for key, group in group_of.items()}


def _assign_rows(records: list[dict[str, Any]], vocab: Vocabulary, modality: dict[str, str]) -> dict[str, tuple]:
    """Give each record of a per-image source (``annotated`` set) its presence row, one per distinct (source,
    class set) in image order; the others keep their source's row. Returns the rows of ``image_presence.csv``."""
    rows: dict[tuple[str, str], str] = {}
    table: dict[str, tuple[str, list[str]]] = {}
    counter: Counter[str] = Counter()
    for record in sorted(records, key=lambda r: r["image"]):
        annotated = record.get("annotated")
        if not isinstance(annotated, str):
            record["annotated"], record["presence_row"] = None, record["source"]
            continue
        key = (record["source"], annotated)
        if key not in rows:
            counter[record["source"]] += 1
            rows[key] = row_name(record["source"], counter[record["source"]])
            classes = [c for c in annotated.split(CLASS_SET_SEPARATOR) if c]
            table[rows[key]] = (modality.get(record["source"], record["modality"]), classes)
        record["presence_row"] = rows[key]
    return table


def run(
    params: DataParams,
    sources_file: str | Path | None = None,
    out_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """Convert every source of the sources file into ``out_dir``; returns the summary metrics.

    Args:
        sources: convert only these sources (names from the sources file). Their images, labels and states are
            brought up to date and the summary covers them alone; the dataset tables (manifest, boxes, quarantine,
            presence, split lists, omnis.yaml) are written only by a run over every source, so several filtered
            runs on disjoint sources may share ``out_dir`` at once and a final full run then reuses their work.

    Raises:
        ConfigError: the sources file or params are invalid, or ``sources`` names a source it does not have
            (per-input problems never raise: they are quarantined).
        OutputBusy: another convert writes the same dataset or one of the same sources into ``out_dir``.
    """
    started = time.perf_counter()
    sources_path = sources_file or params.sources
    # resolving first reports every problem of the file (the vocabulary block's among them) in one error
    every_source, skipped_sources = resolve_sources(sources_path)
    vocab = sources_vocabulary(sources_path)
    for message in skipped_sources:
        log.info(message)
    only = None if sources is None else set(sources)
    if only is not None:
        unknown = only - {s.name for s in every_source}
        if unknown:
            raise ConfigError(
                f"no source named {', '.join(sorted(unknown))} (sources: {', '.join(s.name for s in every_source)})",
                sources_path,
            )
    sources = [s for s in every_source if only is None or s.name in only]
    dataset = paths.resolve(out_dir or params.out)
    # shards: convert works in the untracked per-image folder, then packs what changed into the tracked one
    out = layout.files_dir(dataset) if params.layout == "shards" else dataset
    out.mkdir(parents=True, exist_ok=True)
    with writer_lock(out, [s.name for s in (every_source if only is None else sources)], whole=only is None):
        summary = _run_locked(params, vocab, sources, only, out, workers, progress, started)
        if only is None and params.layout == "shards":
            manifest = pd.read_parquet(out / "manifest.parquet", columns=["source", "split", "image", "label"])
            rows = zip(manifest["source"], manifest["split"], manifest["image"], manifest["label"])
            summary["layout"] = {"layout": "shards", **layout.pack(out, dataset, rows, params.shard_bytes)}
            summary["seconds"] = round(time.perf_counter() - started, 2)
            _atomic_write_text(dataset / "convert_summary.json", json.dumps(summary, indent=2))
        elif only is None and layout.is_sharded(out):
            layout.remove_shards(out)  # this folder holds per-image files again: the old shards would be stale
    return summary


def _run_locked(
    params: DataParams,
    vocab: Vocabulary,
    sources: list[ResolvedSource],
    only: set[str] | None,
    out: Path,
    workers: int | None,
    progress: bool,
    started: float,
) -> dict[str, Any]:
    """The body of :func:`run`, under the writer locks."""
    partials = _clean_partials(out, only)
    if partials:
        log.info("removed %d partial file(s) left by an interrupted run", partials)
    workers = workers or params.workers
    class_ids = {c.name: c.id for c in vocab.classes}

    quarantine: list[dict[str, Any]] = []
    jobs, split_for, item_for = [], {}, {}
    per_source_total: Counter[str] = Counter()
    dropped: set[str] = set()
    unlisted: dict[str, str] = {}
    for source in sources:
        items, skipped, root_unreadable = _enumerate(source)
        if root_unreadable:
            dropped.add(source.name)
            unlisted[source.name] = skipped[0].reason
            log.warning("source %s dropped: %s (its earlier outputs are kept)", source.name, skipped[0].reason)
        # a mask-level row is one file of an item that still converts: the inputs are the items and input rows
        per_source_total[source.name] = len(items) + sum(s.level == "input" for s in skipped)
        quarantine.extend(
            {"input": s.input, "source": source.name, "level": s.level, "action": s.action, "reason": s.reason}
            for s in skipped
        )
        for item in items:
            fixed = source.spec.split if source.spec.split in SPLITS else None
            split_for[(source.name, item.item_id)] = (
                item.split or fixed or split_of(source.name, item.group, params.split)
            )
            jobs.append((source, item, params, out, class_ids))
            item_for[(source.name, item.item_id)] = item
        log.info(
            "%s: %d input(s) found (%s, %s)", source.name, per_source_total[source.name], source.modality, source.format
        )

    bars = {
        s.name: tqdm(
            total=per_source_total[s.name], desc=s.name, unit="input", position=i, leave=True, disable=not progress
        )
        for i, s in enumerate(sources)
    }
    for source_name, count in Counter(q["source"] for q in quarantine if q["level"] == "input").items():
        bars[source_name].update(count)
    outcomes = []
    for outcome in _run_jobs(jobs, workers, params.ray_address):
        outcomes.append(outcome)
        bars[outcome["source"]].update(1)
    for bar in bars.values():
        bar.close()

    records, boxes, status = [], [], Counter()
    stats: dict[str, Counter[str]] = {s.name: Counter() for s in sources}
    live_states = set()
    class_order = {c.name: c.id for c in vocab.classes}
    item_sets = _presence_groups(sources, item_for, outcomes, vocab)
    for outcome in sorted(outcomes, key=lambda o: (o["source"], o["item_id"])):
        status[outcome["status"]] += 1
        if outcome["status"] == "quarantined":
            quarantine.append(
                {
                    "input": outcome["inputs"][0],
                    "source": outcome["source"],
                    "level": "input",
                    "action": "quarantined",
                    "reason": outcome["reason"],
                }
            )
            log.warning("quarantined %s", outcome["reason"][: 10 * REASON_LIMIT])
            continue
        key = (outcome["source"], outcome["item_id"])
        split = split_for[key]
        own = item_sets.get(key)
        annotated = None if own is None else CLASS_SET_SEPARATOR.join(sorted(own, key=class_order.__getitem__))
        records.extend({**r, "split": split, "annotated": annotated} for r in outcome["records"])
        boxes.extend(outcome["boxes"])
        stats[outcome["source"]].update(outcome.get("stats", {}))
        live_states.add(out / STATE_DIR / outcome["source"] / f"{outcome['item_id']}.json")
        for note in outcome["notes"]:
            quarantine.append({"level": "box", **note, "source": outcome["source"]})
    kept: Counter[str] = Counter()
    for name in sorted(dropped):
        earlier, earlier_boxes = _earlier_rows(out, name)
        records.extend(earlier)
        boxes.extend(earlier_boxes)
        kept[name] = len(earlier)

    image_rows = _assign_rows(records, vocab, {s.name: s.modality for s in sources})
    per_image_union: dict[str, set[str]] = {}
    for row_key, (_, classes) in image_rows.items():
        per_image_union.setdefault(row_key.rsplit("@", 1)[0], set()).update(classes)
    novel_ids = {c.id for c in vocab.novel}
    manifest = pd.DataFrame.from_records(records, columns=_MANIFEST_COLUMNS)
    box_table = pd.DataFrame.from_records(boxes, columns=_BOX_COLUMNS)
    box_table["novel"] = box_table["class_id"].isin(novel_ids)
    split_by_image = dict(zip(manifest["image"], manifest["split"]))
    box_table["split"] = box_table["image"].map(split_by_image)
    for row in quarantine:
        row["reason"] = cap_reason(row["reason"])
    quarantine_table = pd.DataFrame.from_records(quarantine, columns=["input", "source", "level", "action", "reason"])
    orphans = _remove_orphans(
        out, set(manifest["image"]) | set(manifest["label"]), live_states, only, protected=dropped
    )

    if only is None:
        _write_table(manifest, out / "manifest.parquet")
        _write_table(box_table, out / "boxes.parquet")
        _atomic_write_text(out / "quarantine.csv", quarantine_table.to_csv(index=False))
        _atomic_write_text(out / "presence.csv", presence_matrix(sources, vocab, per_image_union).to_csv())
        if image_rows:
            _atomic_write_text(out / IMAGE_PRESENCE, image_presence_matrix(image_rows, vocab).to_csv())
        else:
            (out / IMAGE_PRESENCE).unlink(missing_ok=True)
        for split in SPLITS:
            images = manifest.loc[manifest["split"] == split, "image"]
            _atomic_write_text(out / f"{split}.txt", "".join(f"./{p}\n" for p in images))
        _atomic_write_text(
            out / "omnis.yaml", yaml.safe_dump(dataset_yaml(vocab, sources), sort_keys=False, allow_unicode=True)
        )

    converted = status["converted"] + status["reused"]
    quarantined = int((quarantine_table["level"] == "input").sum())
    total = sum(per_source_total.values())
    summary = {
        "converted": converted,
        "quarantined": quarantined,
        "total": total,
        "reconverted": status["converted"],
        "reused": status["reused"],
        "images": len(manifest),
        "boxes": len(box_table),
        "boxes_repaired": int(((quarantine_table["level"] == "box") & (quarantine_table["action"] == "clipped")).sum()),
        "boxes_dropped": int(((quarantine_table["level"] == "box") & (quarantine_table["action"] == "dropped")).sum()),
        "orphans_removed": orphans,
        "sources": {
            s.name: {
                "modality": s.modality,
                "inputs": per_source_total[s.name],
                "images": int((manifest["source"] == s.name).sum()),
                "boxes": int((box_table["source"] == s.name).sum()),
                "quarantined": int(
                    ((quarantine_table["source"] == s.name) & (quarantine_table["level"] == "input")).sum()
                ),
                **({"dropped": True, "kept_from_earlier_run": kept[s.name]} if s.name in dropped else {}),
                **{k: v for k, v in _mask_counts(quarantine_table, stats, s.name).items() if v},
            }
            for s in sources
        },
        **_mask_counts(quarantine_table, stats),
        "splits": {split: int((manifest["split"] == split).sum()) for split in SPLITS},
        "vocabulary": {"classes": len(vocab), "user_classes": len(vocab.user.get("classes", []))},
        "image_presence_rows": len(image_rows),
        "seconds": round(time.perf_counter() - started, 2),
    }
    summary["empty_sources"] = {}
    for s in sources:
        reason = _empty_reason(s, summary["sources"][s.name], unlisted.get(s.name), quarantine_table)
        if reason and s.spec.optional:
            log.info("optional source %s converted nothing: %s", s.name, reason)
        elif reason:
            summary["empty_sources"][s.name] = reason
    if converted + quarantined != total:  # every input is accounted for, or this is a bug worth stopping on
        raise RuntimeError(f"accounting error: converted {converted} + quarantined {quarantined} != total {total}")
    if only is None:
        _atomic_write_text(out / "convert_summary.json", json.dumps(summary, indent=2))
    return summary


def _mask_counts(quarantine: pd.DataFrame, stats: dict[str, Counter[str]], source: str | None = None) -> dict[str, int]:
    """Mask files quarantined, merged with another mask of their class, binarised; speckles removed."""
    rows = quarantine if source is None else quarantine[quarantine["source"] == source]
    done: Counter[str] = Counter()
    for name, counts in stats.items():
        if source is None or name == source:
            done.update(counts)
    return {
        "masks_quarantined": int((rows["level"] == "mask").sum()),
        **{k: int(done[k]) for k in ("masks_merged", "masks_binarised", "speckles_removed")},
    }


def _empty_reason(
    source: ResolvedSource, counts: dict[str, Any], unlisted: str | None, quarantine: pd.DataFrame
) -> str | None:
    """Why a source gave no image (its inputs cannot be listed, none was found, all were quarantined), or None."""
    if unlisted is not None:
        return f"its inputs cannot be listed: {unlisted}"
    if counts["images"]:
        return None
    if not counts["inputs"]:
        looked = source.spec.images or source.spec.annotations
        if looked:
            return f"found no inputs: {looked!r} under {source.root} matches nothing"
        return f"found no inputs under {source.root}"
    rows = quarantine[(quarantine["source"] == source.name) & (quarantine["level"] == "input")]
    example = f", e.g. {rows['reason'].iloc[0]}" if len(rows) else ""
    return f"every one of its {counts['inputs']} input(s) was quarantined (see quarantine.csv){example}"


def require_images(summary: dict[str, Any], sources_file: str | Path | None = None) -> None:
    """Raise when a source (not marked ``optional: true``) converted nothing.

    Raises:
        EmptySource: naming each such source and why (no input found, every input quarantined...).
    """
    empty = summary.get("empty_sources") or {}
    if empty:
        raise EmptySource(
            "; ".join(f"source {name} converted nothing: {why}" for name, why in empty.items())
            + " (mark a source `optional: true` in the sources file if that is expected)",
            sources_file,
        )


_MANIFEST_COLUMNS = [
    "image",
    "label",
    "source",
    "modality",
    "split",
    "item_id",
    "volume_id",
    "patient_id",
    "slice_index",
    "width",
    "height",
    "channels",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "n_boxes",
    "input",
    "presence_row",
    "annotated",
]
_BOX_COLUMNS = [
    "image",
    "source",
    "class_id",
    "class_name",
    "x_center",
    "y_center",
    "width",
    "height",
    "x0",
    "y0",
    "x1",
    "y1",
]


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    tmp = _tmp_name(path)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def summary_line(summary: dict[str, Any]) -> str:
    return f"converted {summary['converted']}, quarantined {summary['quarantined']}, total {summary['total']}"
