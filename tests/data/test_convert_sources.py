"""``convert.run(sources=[...])``: one source at a time, concurrently into one folder, then a full run reuses it all
(what the per-source Prefect flow does)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

from medrov.config import load_params
from medrov.data import convert, demo
from medrov.errors import ConfigError
from tests.conftest import ROOT


@pytest.fixture
def demo_sources(tmp_path):
    params = load_params(
        ROOT / "params.yaml",
        [
            "demo.ct_volumes=1",
            "demo.mri_volumes=1",
            "demo.volume_shape=[48,48,6]",
            "demo.xray_images=2",
            "demo.microscopy_images=2",
            "demo.endoscopy_images=2",
            "demo.image_size=64",
            "data.workers=1",
        ],
    )
    demo.generate(params.demo, tmp_path / "raw")
    text = (ROOT / "data" / "sources.yaml").read_text().replace("raw/synthetic/", f"{tmp_path}/raw/")
    (tmp_path / "sources.yaml").write_text(text.replace("{shared}", str(tmp_path / "no-shared-data")))
    return params.data, tmp_path / "sources.yaml"


def test_filtered_runs_share_a_folder_and_a_full_run_reuses_them(demo_sources, tmp_path):
    params, sources_file = demo_sources
    names = convert.source_names(params, sources_file)
    assert names == [
        "SynthAbdomenCT",
        "SynthKidneyCT",
        "SynthAbdomenMRI",
        "SynthChestXray",
        "SynthBloodSmear",
        "SynthPolyp",
    ]
    out = tmp_path / "omnis"
    with ThreadPoolExecutor(max_workers=3) as pool:
        parts = list(
            pool.map(lambda name: convert.run(params, sources_file, out, progress=False, sources=[name]), names)
        )
    for name, part in zip(names, parts):
        assert set(part["sources"]) == {name}
        assert part["converted"] == part["total"] == part["sources"][name]["inputs"] > 0
        assert (out / "images" / name).is_dir()
    # only a run over every source writes the dataset tables
    assert not (out / "manifest.parquet").exists() and not (out / "omnis.yaml").exists()

    full = convert.run(params, sources_file, out, progress=False)
    assert full["reused"] == full["total"] == sum(p["total"] for p in parts) and full["reconverted"] == 0
    fresh = convert.run(params, sources_file, tmp_path / "fresh", progress=False)
    a = pd.read_parquet(out / "manifest.parquet").drop(columns=["input"])
    b = pd.read_parquet(tmp_path / "fresh" / "manifest.parquet").drop(columns=["input"])
    pd.testing.assert_frame_equal(a, b)
    assert full["images"] == fresh["images"] and full["boxes"] == fresh["boxes"]

    # a filtered rerun leaves the other sources' files alone
    again = convert.run(params, sources_file, out, progress=False, sources=["SynthPolyp"])
    assert again["reused"] == again["total"]
    assert len(list((out / "images" / "SynthAbdomenCT").glob("*.png"))) == full["sources"]["SynthAbdomenCT"]["images"]


def test_unknown_source_name_is_a_config_error(demo_sources, tmp_path):
    params, sources_file = demo_sources
    with pytest.raises(ConfigError, match=r"no source named NoSuchSource .*SynthPolyp") as err:
        convert.run(params, sources_file, tmp_path / "omnis", progress=False, sources=["NoSuchSource"])
    assert str(sources_file) in str(err.value)
