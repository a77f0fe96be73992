"""Storage layouts of a converted Omnis folder: ``files`` (one PNG + one label file per image) or ``shards``.

``files`` is what ``convert`` writes and every reader reads: ``images/``, ``labels/`` and the tables. DVC tracks
every file of it, which costs minutes per ``dvc status``/``push``/``pull`` at Omnis' 600K images (issue 19).

``shards`` keeps the tables as files and packs the images and labels into uncompressed tar shards, one series per
source and split (``shards/<source>/<split>-NNN.tar``, at most ``data.shard_bytes`` each), listed in
``shards.json``. DVC then tracks a few hundred files. The per-image files live in an untracked sibling folder
``<out>.files/``: ``convert`` works there (so it stays incremental), and readers get that folder through
:func:`readable`, which extracts the shards that changed (after a ``dvc pull`` or ``checkout``) first.

Shards are deterministic (sorted members, zero times and owners), so the same images give the same bytes and
DVC sees no change; a shard is only rewritten when one of its files changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from medrov.errors import SourceReadError

log = logging.getLogger("medrov.layout")

INDEX = "shards.json"
SHARD_DIR = "shards"
# the work folder's record of which shard content it holds (machine-local: never tracked)
MARKER = ".shards-state.json"
FILE_FOLDERS = ("images", "labels")
# what a reader needs besides the images: copied between the tracked folder and the work folder
TABLES = (
    "manifest.parquet",
    "boxes.parquet",
    "presence.csv",
    "quarantine.csv",
    "convert_summary.json",
    "omnis.yaml",
    "train.txt",
    "val.txt",
    "test.txt",
)
INDEX_VERSION = 1


def files_dir(out: Path) -> Path:
    """The untracked per-image folder of a sharded dataset ``out`` (``data/omnis`` -> ``data/omnis.files``)."""
    return out.with_name(f"{out.name}.files")


def is_sharded(data: Path) -> bool:
    """Whether ``data`` holds the shards layout (its ``shards.json``)."""
    return (data / INDEX).is_file()


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _copy_if_changed(src: Path, dest: Path) -> bool:
    """Copy ``src`` over ``dest`` (atomically) unless the bytes are already equal; the caller's data may be big."""
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dest)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class _HashingWriter:
    """A file wrapper that md5-hashes what is written through it (the shard's digest without reading it again)."""

    def __init__(self, fh) -> None:
        self.fh, self.md5, self.size = fh, hashlib.md5(), 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.size += len(data)
        return self.fh.write(data)

    def tell(self) -> int:
        return self.size


def _write_shard(work: Path, members: list[str], dest: Path) -> tuple[str, int]:
    """Write the deterministic tar of ``members`` (paths relative to ``work``) to ``dest``; returns (md5, bytes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(dest)
    with open(tmp, "wb") as raw:
        writer = _HashingWriter(raw)
        with tarfile.open(fileobj=writer, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel in members:
                path = work / rel
                info = tarfile.TarInfo(rel)
                info.size = path.stat().st_size
                info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    os.replace(tmp, dest)
    return writer.md5.hexdigest(), writer.size


def _stat_key(work: Path, members: Iterable[str]) -> str:
    """Which versions of the members a shard was built from: (name, size, mtime), as make and DVC's state do."""
    digest = hashlib.blake2b(digest_size=16)
    for rel in members:
        info = (work / rel).stat()
        digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def plan_shards(work: Path, rows: Iterable[tuple[str, str, str, str]], shard_bytes: int) -> dict[str, list[str]]:
    """Shard name -> members: per (source, split), in path order, cut before a shard would exceed ``shard_bytes``.

    Args:
        rows: ``(source, split, image, label)`` per manifest row, paths relative to ``work``.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for source, split, image, label in rows:
        groups.setdefault((source, split), []).extend((image, label))
    plan: dict[str, list[str]] = {}
    for (source, split), members in sorted(groups.items()):
        part, size, current = 0, 0, []
        for rel in sorted(members):
            # a tar member costs its size rounded up to 512-byte blocks plus a 512-byte header
            cost = 512 + -(-(work / rel).stat().st_size // 512) * 512
            if current and size + cost > shard_bytes:
                plan[f"{SHARD_DIR}/{source}/{split}-{part:03d}.tar"] = current
                part, size, current = part + 1, 0, []
            current.append(rel)
            size += cost
        plan[f"{SHARD_DIR}/{source}/{split}-{part:03d}.tar"] = current
    return plan


def pack(work: Path, out: Path, rows: Iterable[tuple[str, str, str, str]], shard_bytes: int) -> dict[str, Any]:
    """Bring the sharded dataset ``out`` up to date with the converted folder ``work``; returns counts.

    Only shards whose members changed (name, size or mtime) are rewritten; the tables are copied when their
    bytes differ; ``shards.json`` is written last, so an interrupted pack leaves the previous index in charge.
    Per-image files of an earlier ``files`` layout in ``out`` are removed (they would be tracked again).
    """
    plan = plan_shards(work, rows, shard_bytes)
    old_index = _read_json(out / INDEX).get("shards", {})
    marker = _read_json(work / MARKER)
    keys = {name: _stat_key(work, members) for name, members in plan.items()}

    def up_to_date(name: str) -> bool:
        entry, seen, dest = old_index.get(name), marker.get(name, {}), out / name
        return bool(
            entry
            and seen.get("key") == keys[name]
            and seen.get("md5") == entry["md5"]
            and dest.is_file()
            and dest.stat().st_size == entry["bytes"]
        )

    todo = [name for name in plan if not up_to_date(name)]
    # shards are independent: threads overlap reads, writes and md5 (all release the GIL on large buffers)
    with ThreadPoolExecutor(max_workers=4) as pool:
        fresh = dict(zip(todo, pool.map(lambda name: _write_shard(work, plan[name], out / name), todo)))
    shards, state, total = {}, {}, 0
    for name, members in plan.items():
        md5, size = fresh[name] if name in fresh else (old_index[name]["md5"], old_index[name]["bytes"])
        shards[name] = {"md5": md5, "bytes": size, "files": len(members)}
        state[name] = {"key": keys[name], "md5": md5}
        total += size
    written, reused = len(todo), len(plan) - len(todo)
    for table in TABLES:
        if table != "convert_summary.json" and (work / table).is_file():
            _copy_if_changed(work / table, out / table)
    for stale in sorted((out / SHARD_DIR).rglob("*")) if (out / SHARD_DIR).is_dir() else []:
        if stale.is_file() and stale.relative_to(out).as_posix() not in shards:
            stale.unlink()
    for folder in sorted((out / SHARD_DIR).glob("*"), reverse=True) if (out / SHARD_DIR).is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    for folder in (*FILE_FOLDERS, ".state"):
        shutil.rmtree(out / folder, ignore_errors=True)
    index = json.dumps({"version": INDEX_VERSION, "layout": "shards", "shards": shards}, indent=1, sort_keys=True)
    if not (out / INDEX).is_file() or (out / INDEX).read_text() != index:
        _write_atomic(out / INDEX, index.encode())
    _write_atomic(work / MARKER, json.dumps(state, sort_keys=True).encode())
    log.info("shards: %d written, %d unchanged, %.1f MB in %s", written, reused, total / 1e6, out / SHARD_DIR)
    return {"shards": len(shards), "shards_written": written, "shards_reused": reused, "shard_bytes": total}


def remove_shards(out: Path) -> None:
    """Drop the shards layout from ``out`` (a ``files`` conversion writes there now)."""
    (out / INDEX).unlink(missing_ok=True)
    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)


def materialise(data: Path, timeout: float = 3600) -> Path:
    """Extract the shards of ``data`` that the work folder does not hold yet; returns the work folder.

    A source with a changed shard is extracted whole (its old images, labels and convert states are removed
    first, so no image of another version stays behind nor is trusted by a later ``convert``). One process at a
    time per folder (a lock); readers that come later wait for it.

    Raises:
        SourceReadError: a shard is missing, unreadable or holds a member outside ``images/`` and ``labels/``.
    """
    from filelock import FileLock

    work = files_dir(data)
    index = _read_json(data / INDEX)
    if index.get("version") != INDEX_VERSION:
        raise SourceReadError(f"not a shard index of version {INDEX_VERSION}: run `medrov convert` again", data / INDEX)
    shards: dict[str, dict[str, Any]] = index["shards"]
    (work / ".locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(work / ".locks" / "materialise.lock"), timeout=timeout):
        marker = _read_json(work / MARKER)
        changed = sorted(
            {name.split("/")[1] for name, entry in shards.items() if marker.get(name, {}).get("md5") != entry["md5"]}
        )
        for source in changed:
            for folder in (*FILE_FOLDERS, ".state"):
                shutil.rmtree(work / folder / source, ignore_errors=True)
            names = [n for n in shards if n.split("/")[1] == source]
            for name in names:
                marker.pop(name, None)
            # one shard at a time: shards of a source write into the same folders, and 4 parallel extractions
            # were 4x slower than one `tar xf` after the other at 200K files (bench/scale.py)
            for name in names:
                _extract(data / name, work)
            marker.update({name: {"key": None, "md5": shards[name]["md5"]} for name in names})
            # the marker is saved per source: an interrupted extraction redoes only the source it was in
            _write_atomic(work / MARKER, json.dumps(marker, sort_keys=True).encode())
        live = {n.split("/")[1] for n in shards}
        for folder in FILE_FOLDERS:  # sources no longer in the dataset
            for sub in (work / folder).glob("*") if (work / folder).is_dir() else []:
                if sub.is_dir() and sub.name not in live:
                    shutil.rmtree(sub)
        for name in [n for n in marker if n not in shards]:
            marker.pop(name)
        _write_atomic(work / MARKER, json.dumps(marker, sort_keys=True).encode())
        for table in TABLES:
            if (data / table).is_file():
                _copy_if_changed(data / table, work / table)
        if changed:
            log.info("materialised %d source(s) from shards into %s: %s", len(changed), work, ", ".join(changed))
    return work


def _check_members(shard: Path) -> list[tarfile.TarInfo]:
    """The members of a shard, refused unless each is a regular file under ``images/`` or ``labels/``."""
    try:
        with tarfile.open(shard, mode="r:") as tar:
            members = tar.getmembers()  # headers only: the data blocks are skipped
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise SourceReadError(
            f"cannot read shard ({type(exc).__name__}: {exc}): run `dvc pull` or convert again", shard
        ) from exc
    for member in members:
        parts = PurePosixPath(member.name).parts
        if not member.isfile() or not parts or parts[0] not in FILE_FOLDERS or ".." in parts:
            raise SourceReadError(f"shard member outside images/ and labels/: {member.name}", shard)
    return members


def _extract(shard: Path, work: Path) -> int:
    """Write the members of one shard under ``work``; returns their count.

    The members are checked first (headers only); then ``tar xf`` writes them when there is one: Python's
    ``extractall`` was 3x and a plain Python loop 4x slower than ``tar xf`` at 200K files (bench/scale.py).
    """
    members = _check_members(shard)
    tar_cmd = shutil.which("tar")
    if tar_cmd:
        import subprocess

        work.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [tar_cmd, "-xf", str(shard), "-C", str(work), "--no-same-owner", "--no-same-permissions"],
            capture_output=True,
            text=True,
        )
        if done.returncode:
            raise SourceReadError(f"cannot extract shard: {done.stderr.strip()[:300]}", shard)
        return len(members)
    made = set()
    with tarfile.open(shard, mode="r:") as tar:
        for member in members:
            dest = work.joinpath(*PurePosixPath(member.name).parts)
            if dest.parent not in made:
                dest.parent.mkdir(parents=True, exist_ok=True)
                made.add(dest.parent)
            with tar.extractfile(member) as src, open(dest, "wb") as fh:
                fh.write(src.read())
    return len(members)


def readable(data: Path) -> Path:
    """The folder a reader opens for the dataset ``data``: itself (``files``), or its materialised work folder."""
    return materialise(data) if is_sharded(data) else data


def readable_file(file: Path) -> Path:
    """``readable`` for a file of the dataset (``omnis.yaml``): the same file in the folder readers open."""
    return readable(file.parent) / file.name if is_sharded(file.parent) else file
