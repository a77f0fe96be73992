"""The shards layout (``data.layout: shards``): tar shards per source and split tracked, images materialised.

One tiny demo conversion per module; each test copies what it changes. Checked: the tracked folder holds tables
and shards only; a second convert rewrites nothing and a reconversion from scratch gives byte-identical shards
(DVC sees no change); a changed input rewrites only its source's shards; readers get the images back from the
shards alone (after a ``dvc pull``); a corrupt shard is one clear error naming it; validate reads the layout.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medrov.config import load_params
from medrov.data import convert, demo, layout, validate
from medrov.errors import SourceReadError
from tests.conftest import ROOT
from tests.tiny_models import TINY_DEMO

OVERRIDES = [*TINY_DEMO, "data.workers=1", "data.layout=shards", "data.shard_bytes=1048576"]


def tree_md5(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml", OVERRIDES)


@pytest.fixture(scope="module")
def raw(params, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout-raw")
    demo.generate(params.demo, root / "raw" / "synthetic")
    text = (ROOT / "data" / "sources.yaml").read_text()
    (root / "sources.yaml").write_text(
        text.replace("raw/synthetic/", f"{root}/raw/synthetic/").split("  # ---- real")[0]
    )
    return root


def convert_into(params, raw: Path, out: Path) -> dict:
    return convert.run(params.data, sources_file=raw / "sources.yaml", out_dir=out, progress=False)


@pytest.fixture(scope="module")
def sharded(params, raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("layout-out") / "omnis"
    summary = convert_into(params, raw, out)
    assert summary["quarantined"] == 0 and summary["images"] > 0
    return out


def test_the_tracked_folder_holds_tables_and_shards_only(sharded):
    tracked = {p.relative_to(sharded).as_posix() for p in sharded.rglob("*") if p.is_file()}
    assert not any(name.startswith(("images/", "labels/", ".state/", ".locks/")) for name in tracked), tracked
    assert {"manifest.parquet", "boxes.parquet", "presence.csv", "omnis.yaml", "train.txt", layout.INDEX} <= tracked
    index = json.loads((sharded / layout.INDEX).read_text())
    manifest = pd.read_parquet(sharded / "manifest.parquet")
    # one series per (source, split) that has images, every image and label file in exactly one shard
    assert {tuple(name.split("/")[1:3]) for name in index["shards"]} == {
        (s, f"{sp}-000.tar") for s, sp in set(zip(manifest["source"], manifest["split"]))
    }
    members = []
    for name, entry in index["shards"].items():
        assert hashlib.md5((sharded / name).read_bytes()).hexdigest() == entry["md5"]
        with tarfile.open(sharded / name) as tar:
            members += tar.getnames()
    assert sorted(members) == sorted([*manifest["image"], *manifest["label"]])
    # the per-image folder sits beside it, where convert worked
    assert (layout.files_dir(sharded) / manifest["image"].iloc[0]).is_file()
    assert json.loads((sharded / "convert_summary.json").read_text())["layout"]["shards"] == len(index["shards"])


def test_convert_again_and_from_scratch_give_the_same_bytes(params, raw, sharded, tmp_path):
    out = Path(shutil.copytree(sharded, tmp_path / "omnis"))
    shutil.copytree(layout.files_dir(sharded), layout.files_dir(out))
    before = tree_md5(out)
    again = convert_into(params, raw, out)
    assert again["reused"] == again["total"] and again["layout"]["shards_written"] == 0
    assert {k: v for k, v in tree_md5(out).items() if k != "convert_summary.json"} == {
        k: v for k, v in before.items() if k != "convert_summary.json"
    }
    # a conversion from nothing (another machine, new mtimes) packs byte-identical shards: DVC sees no change
    fresh = tmp_path / "fresh" / "omnis"
    convert_into(params, raw, fresh)
    assert (fresh / layout.INDEX).read_bytes() == (sharded / layout.INDEX).read_bytes()
    for name in json.loads((sharded / layout.INDEX).read_text())["shards"]:
        assert (fresh / name).read_bytes() == (sharded / name).read_bytes(), name


def test_a_changed_input_rewrites_only_its_sources_shards(params, raw, tmp_path):
    private = Path(shutil.copytree(raw, tmp_path / "raw"))
    (private / "sources.yaml").write_text((raw / "sources.yaml").read_text().replace(str(raw), str(private)))
    out = tmp_path / "omnis"
    convert_into(params, private, out)
    index = json.loads((out / layout.INDEX).read_text())["shards"]
    stamps = {name: (out / name).stat().st_mtime_ns for name in index}
    # one X-ray image inverted; every other input unchanged
    from PIL import Image

    victim = sorted((private / "raw" / "synthetic" / "SynthChestXray" / "images").glob("*.png"))[0]
    with Image.open(victim) as img:
        pixels = np.asarray(img)
    Image.fromarray((pixels.max() - pixels).astype(pixels.dtype)).save(victim)
    summary = convert_into(params, private, out)
    assert summary["reconverted"] == 1 and summary["reused"] == summary["total"] - 1
    after = json.loads((out / layout.INDEX).read_text())["shards"]
    assert set(after) == set(index)
    changed = {name for name in after if after[name]["md5"] != index[name]["md5"]}
    rewritten = {name for name in after if (out / name).stat().st_mtime_ns != stamps[name]}
    assert len(changed) == 1 and changed == rewritten == {summary_shard(out, victim.name)}, (changed, rewritten)
    assert summary["layout"]["shards_written"] == 1


def summary_shard(out: Path, raw_name: str) -> str:
    """The shard holding the image converted from the raw file ``raw_name``."""
    manifest = pd.read_parquet(out / "manifest.parquet")
    row = manifest[manifest["input"].str.endswith(raw_name) & (manifest["source"] == "SynthChestXray")].iloc[0]
    return f"shards/SynthChestXray/{row['split']}-000.tar"


def test_readers_get_the_images_back_from_the_shards_alone(params, sharded, tmp_path):
    """What a fresh clone has after ``dvc pull``: the tracked folder only. Validation materialises and passes."""
    out = Path(shutil.copytree(sharded, tmp_path / "omnis"))
    assert not layout.files_dir(out).exists()
    summary = validate.run(params.validate_.model_copy(update={"report": None}), data_dir=out)
    assert summary["success"], validate.summary_lines(summary)
    work = layout.files_dir(out)
    original = layout.files_dir(sharded)
    manifest = pd.read_parquet(out / "manifest.parquet")
    for rel in [*manifest["image"], *manifest["label"]]:
        assert (work / rel).read_bytes() == (original / rel).read_bytes(), rel
    assert (work / "omnis.yaml").read_bytes() == (out / "omnis.yaml").read_bytes()
    assert layout.readable_file(out / "omnis.yaml") == work / "omnis.yaml"
    # a second reader finds everything in place: nothing is extracted again
    stamp = (work / manifest["image"].iloc[0]).stat().st_mtime_ns
    assert layout.readable(out) == work
    assert (work / manifest["image"].iloc[0]).stat().st_mtime_ns == stamp


def test_a_changed_shard_re_extracts_its_source(sharded, tmp_path):
    """``dvc checkout`` of another version replaces shards: the reader re-extracts those sources, and stale
    images of the old version are gone."""
    out = Path(shutil.copytree(sharded, tmp_path / "omnis"))
    work = layout.readable(out)
    index = json.loads((out / layout.INDEX).read_text())
    name = next(n for n in index["shards"] if n.startswith("shards/SynthPolyp/"))
    with tarfile.open(out / name) as tar:
        keep = [m for m in tar.getmembers() if m.isfile()][2:]  # one image and its label fewer
        dropped = [m.name for m in tar.getmembers()][:2]
        files = {m.name: tar.extractfile(m).read() for m in keep}
    with tarfile.open(out / name, "w", format=tarfile.GNU_FORMAT) as tar:
        for member in keep:
            import io

            tar.addfile(member, io.BytesIO(files[member.name]))
    index["shards"][name]["md5"] = hashlib.md5((out / name).read_bytes()).hexdigest()
    (out / layout.INDEX).write_text(json.dumps(index))
    stamp_other = next((work / "images" / "SynthChestXray").iterdir()).stat().st_mtime_ns
    layout.readable(out)
    assert all(not (work / rel).exists() for rel in dropped), dropped
    assert all((work / rel).is_file() for rel in files)
    assert next((work / "images" / "SynthChestXray").iterdir()).stat().st_mtime_ns == stamp_other


def test_a_corrupt_shard_is_one_error_naming_it(sharded, tmp_path):
    out = Path(shutil.copytree(sharded, tmp_path / "omnis"))
    index = json.loads((out / layout.INDEX).read_text())
    name = sorted(index["shards"])[0]
    (out / name).write_bytes(b"not a tar file at all" * 40)
    index["shards"][name]["md5"] = "0" * 32
    (out / layout.INDEX).write_text(json.dumps(index))
    with pytest.raises(SourceReadError) as err:
        layout.readable(out)
    assert name in str(err.value) and "cannot read shard" in str(err.value)


def test_switching_back_to_files_drops_the_shards(params, raw, sharded, tmp_path):
    out = Path(shutil.copytree(sharded, tmp_path / "omnis"))
    summary = convert.run(params.data.model_copy(update={"layout": "files"}), raw / "sources.yaml", out, progress=False)
    assert summary["images"] > 0 and "layout" not in summary
    assert not layout.is_sharded(out) and not (out / layout.SHARD_DIR).exists()
    assert layout.readable(out) == out
    assert (out / pd.read_parquet(out / "manifest.parquet")["image"].iloc[0]).is_file()


def test_a_shard_member_outside_images_and_labels_is_refused(sharded, tmp_path):
    import io

    out = Path(shutil.copytree(sharded, tmp_path / "omnis"))
    index = json.loads((out / layout.INDEX).read_text())
    name = sorted(index["shards"])[0]
    with tarfile.open(out / name, "w") as tar:
        info = tarfile.TarInfo("images/../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    index["shards"][name]["md5"] = "0" * 32
    (out / layout.INDEX).write_text(json.dumps(index))
    with pytest.raises(SourceReadError, match="outside images/ and labels/"):
        layout.readable(out)
    assert not (tmp_path / "escaped.txt").exists()
