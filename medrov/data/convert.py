"""``convert``: raw sources -> the Omnis dataset (images, YOLO labels, manifest, boxes, presence, quarantine).

Parallel (process pool, or Ray when ``data.ray_address`` is set), idempotent (an item whose inputs, source
settings and converter version are unchanged and whose outputs are all on disk is not converted again) and
atomic (files are written under a temporary name and renamed; an item's state file is written last, so a
killed run leaves no half-written image that a later run would trust).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import traceback
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml
from tqdm.auto import tqdm

from medrov import paths
from medrov.catalog import Vocabulary, load_vocabulary
from medrov.config import DataParams
from medrov.data.adapters import Item, Sample, Skipped
from medrov.data.formats import ADAPTERS
from medrov.data.presence import presence_matrix
from medrov.data.sources import ResolvedSource, resolve_sources
from medrov.data.splits import SPLITS, split_of
from medrov.errors import ConfigError, SourceReadError

log = logging.getLogger("medrov.convert")

# bump when the output of an unchanged input changes, so reruns reconvert everything
CONVERTER_VERSION = 1
STATE_DIR = ".state"
TMP_SUFFIX = ".partial"
# settings that change pixels or boxes; the others (workers, split fractions...) do not force a reconversion
_CONTENT_PARAMS = ("boxes", "connectivity", "min_box_pixels", "skip_empty_slices", "keep_empty_images", "ct_window", "mri_percentiles", "png_compress_level")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode())


def _write_png(path: Path, pixels, compress_level: int) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + TMP_SUFFIX)
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
        "source": source.spec.model_dump(mode="json", exclude={"split", "optional", "presence"}),
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
        return {**base, "status": "quarantined", "reason": f"{item.inputs[0]}: internal error {type(exc).__name__}: {exc} ({detail})"}
    state = {**base, "fingerprint": fingerprint, "records": records, "boxes": boxes, "notes": notes}
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
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(process_item, *job) for job in jobs]
            for future in as_completed(futures):
                yield future.result()


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
        remote = ray.remote(process_item)
        pending = [remote.remote(*job) for job in jobs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if owns:
            ray.shutdown()


def _clean_partials(out: Path, only: set[str] | None = None) -> int:
    removed = 0
    roots = [out] if only is None else [out / folder / name for folder in ("images", "labels", STATE_DIR) for name in only]
    for root in roots:
        for tmp in root.rglob(f"*{TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def printable(name: str) -> str:
    """A path as text that every writer accepts: undecodable bytes in file names become \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _enumerate(source: ResolvedSource) -> tuple[list[Item], list[Skipped]]:
    enumerate_items, _ = ADAPTERS[source.format]
    try:
        items, skipped = enumerate_items(source)
    except SourceReadError as exc:
        return [], [Skipped(exc.path or str(source.root), str(exc))]
    except Exception as exc:  # an adapter bug must not stop the other sources
        return [], [Skipped(str(source.root), f"cannot list the inputs of source {source.name}: internal error {type(exc).__name__}: {exc}")]
    skipped = [Skipped(printable(s.input), printable(s.reason)) for s in skipped]
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
    return unique, skipped


def _remove_orphans(out: Path, keep: set[str], live_states: set[Path], only: set[str] | None = None) -> int:
    removed = 0

    def roots(folder: str) -> list[Path]:
        return [out / folder] if only is None else [out / folder / name for name in sorted(only)]

    for root in (r for folder in ("images", "labels") for r in roots(folder)):
        for file in root.rglob("*") if root.is_dir() else []:
            if file.is_file() and file.relative_to(out).as_posix() not in keep:
                file.unlink()
                removed += 1
    for state_root in roots(STATE_DIR):
        for file in state_root.rglob("*.json") if state_root.is_dir() else []:
            if file not in live_states:
                file.unlink()
    for folder in ("images", "labels", STATE_DIR):
        root = out / folder
        for sub in sorted(root.glob("*"), reverse=True) if root.is_dir() else []:
            if sub.is_dir() and (only is None or sub.name in only) and not any(sub.iterdir()):
                sub.rmdir()
    return removed


def dataset_yaml(vocab: Vocabulary, sources: list[ResolvedSource]) -> dict[str, Any]:
    """The ultralytics dataset file: split lists, every vocabulary class (prompt = name/synonyms), base/novel."""
    return {
        "train": "train.txt",
        "val": "val.txt",
        "test": "test.txt",
        "nc": len(vocab),
        "names": {c.id: c.prompt for c in vocab.classes},
        "base": [c.id for c in vocab.classes if c.split == "base"],
        "novel": [c.id for c in vocab.classes if c.split == "novel"],
        "sources": {s.name: s.modality for s in sources},
    }


def source_names(params: DataParams, sources_file: str | Path | None = None) -> list[str]:
    """Names of the sources that ``run`` would convert (optional sources that are absent are left out)."""
    sources, _ = resolve_sources(sources_file or params.sources, load_vocabulary())
    return [s.name for s in sources]


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
    """
    started = time.perf_counter()
    vocab = load_vocabulary()
    sources_path = sources_file or params.sources
    every_source, skipped_sources = resolve_sources(sources_path, vocab)
    for message in skipped_sources:
        log.info(message)
    only = None if sources is None else set(sources)
    if only is not None:
        unknown = only - {s.name for s in every_source}
        if unknown:
            raise ConfigError(f"no source named {', '.join(sorted(unknown))} (sources: {', '.join(s.name for s in every_source)})", sources_path)
    sources = [s for s in every_source if only is None or s.name in only]
    out = paths.resolve(out_dir or params.out)
    out.mkdir(parents=True, exist_ok=True)
    partials = _clean_partials(out, only)
    if partials:
        log.info("removed %d partial file(s) left by an interrupted run", partials)
    workers = workers or params.workers
    class_ids = {c.name: c.id for c in vocab.classes}

    quarantine: list[dict[str, Any]] = []
    jobs, split_for = [], {}
    per_source_total: Counter[str] = Counter()
    for source in sources:
        items, skipped = _enumerate(source)
        per_source_total[source.name] = len(items) + len(skipped)
        quarantine.extend(
            {"input": s.input, "source": source.name, "level": "input", "action": "quarantined", "reason": s.reason}
            for s in skipped
        )
        for item in items:
            fixed = source.spec.split if source.spec.split in SPLITS else None
            split_for[(source.name, item.item_id)] = item.split or fixed or split_of(source.name, item.group, params.split)
            jobs.append((source, item, params, out, class_ids))
        log.info("%s: %d input(s) found (%s, %s)", source.name, per_source_total[source.name], source.modality, source.format)

    bars = {
        s.name: tqdm(total=per_source_total[s.name], desc=s.name, unit="input", position=i, leave=True, disable=not progress)
        for i, s in enumerate(sources)
    }
    for source_name, count in Counter(q["source"] for q in quarantine).items():
        bars[source_name].update(count)
    outcomes = []
    for outcome in _run_jobs(jobs, workers, params.ray_address):
        outcomes.append(outcome)
        bars[outcome["source"]].update(1)
    for bar in bars.values():
        bar.close()

    records, boxes, status = [], [], Counter()
    live_states = set()
    for outcome in sorted(outcomes, key=lambda o: (o["source"], o["item_id"])):
        status[outcome["status"]] += 1
        if outcome["status"] == "quarantined":
            quarantine.append(
                {"input": outcome["inputs"][0], "source": outcome["source"], "level": "input", "action": "quarantined", "reason": outcome["reason"]}
            )
            log.warning("quarantined %s", outcome["reason"])
            continue
        split = split_for[(outcome["source"], outcome["item_id"])]
        records.extend({**r, "split": split} for r in outcome["records"])
        boxes.extend(outcome["boxes"])
        live_states.add(out / STATE_DIR / outcome["source"] / f"{outcome['item_id']}.json")
        for note in outcome["notes"]:
            quarantine.append({**note, "source": outcome["source"], "level": "box"})

    novel_ids = {c.id for c in vocab.novel}
    manifest = pd.DataFrame.from_records(records, columns=_MANIFEST_COLUMNS)
    box_table = pd.DataFrame.from_records(boxes, columns=_BOX_COLUMNS)
    box_table["novel"] = box_table["class_id"].isin(novel_ids)
    split_by_image = dict(zip(manifest["image"], manifest["split"]))
    box_table["split"] = box_table["image"].map(split_by_image)
    quarantine_table = pd.DataFrame.from_records(quarantine, columns=["input", "source", "level", "action", "reason"])
    orphans = _remove_orphans(out, set(manifest["image"]) | set(manifest["label"]), live_states, only)

    if only is None:
        _write_table(manifest, out / "manifest.parquet")
        _write_table(box_table, out / "boxes.parquet")
        _atomic_write_text(out / "quarantine.csv", quarantine_table.to_csv(index=False))
        _atomic_write_text(out / "presence.csv", presence_matrix(sources, vocab).to_csv())
        for split in SPLITS:
            images = manifest.loc[manifest["split"] == split, "image"]
            _atomic_write_text(out / f"{split}.txt", "".join(f"./{p}\n" for p in images))
        _atomic_write_text(out / "omnis.yaml", yaml.safe_dump(dataset_yaml(vocab, sources), sort_keys=False, allow_unicode=True))

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
                "quarantined": int(((quarantine_table["source"] == s.name) & (quarantine_table["level"] == "input")).sum()),
            }
            for s in sources
        },
        "splits": {split: int((manifest["split"] == split).sum()) for split in SPLITS},
        "seconds": round(time.perf_counter() - started, 2),
    }
    if converted + quarantined != total:  # every input is accounted for, or this is a bug worth stopping on
        raise RuntimeError(f"accounting error: converted {converted} + quarantined {quarantined} != total {total}")
    if only is None:
        _atomic_write_text(out / "convert_summary.json", json.dumps(summary, indent=2))
    return summary


_MANIFEST_COLUMNS = [
    "image", "label", "source", "modality", "split", "item_id", "volume_id", "patient_id", "slice_index",
    "width", "height", "channels", "spacing_x", "spacing_y", "spacing_z", "n_boxes", "input",
]
_BOX_COLUMNS = ["image", "source", "class_id", "class_name", "x_center", "y_center", "width", "height", "x0", "y0", "x1", "y1"]


def _write_table(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + TMP_SUFFIX)
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def summary_line(summary: dict[str, Any]) -> str:
    return f"converted {summary['converted']}, quarantined {summary['quarantined']}, total {summary['total']}"
