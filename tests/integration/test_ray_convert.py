"""Conversion on a real local Ray (2 CPUs, loopback only) gives the same dataset as the process pool."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from medrov.config import load_params
from medrov.data import convert, demo
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_ray_local_matches_process_pool(tmp_path):
    params = load_params(
        ROOT / "params.yaml",
        [
            "demo.ct_volumes=2",
            "demo.mri_volumes=1",
            "demo.xray_images=3",
            "demo.microscopy_images=3",
            "demo.endoscopy_images=3",
        ],
    )
    demo.generate(params.demo, tmp_path / "raw")
    sources = (ROOT / "data" / "sources.yaml").read_text().replace("raw/synthetic/", f"{tmp_path}/raw/")
    (tmp_path / "sources.yaml").write_text(sources.split("  # ---- real public data")[0])

    pool = convert.run(
        params.data, sources_file=tmp_path / "sources.yaml", out_dir=tmp_path / "pool", workers=2, progress=False
    )
    ray_params = params.data.model_copy(update={"ray_address": "local"})
    import ray

    try:
        on_ray = convert.run(
            ray_params, sources_file=tmp_path / "sources.yaml", out_dir=tmp_path / "ray", workers=2, progress=False
        )
        assert not ray.is_initialized(), "convert must shut down the Ray instance it started"
    finally:
        if ray.is_initialized():
            ray.shutdown()

    assert on_ray["converted"] == pool["converted"] == on_ray["total"] == 2 + 2 + 1 + 3 + 3 + 3
    for table in ("manifest.parquet", "boxes.parquet"):
        a = pd.read_parquet(tmp_path / "pool" / table).drop(columns=["input"], errors="ignore")
        b = pd.read_parquet(tmp_path / "ray" / table).drop(columns=["input"], errors="ignore")
        assert len(a) > 0
        pd.testing.assert_frame_equal(
            a.sort_values(list(a.columns[:3])).reset_index(drop=True),
            b.sort_values(list(b.columns[:3])).reset_index(drop=True),
        )


def test_a_second_local_ray_from_the_same_process_starts():
    """Ray turns token auth on at the first start of a process and caches the token: a second local instance from
    the same process must find it (it crashed in its GCS with 'Check failed: has_token' when HOME moved)."""
    import ray

    from medrov.env import init_local_ray

    for _ in range(2):
        try:
            init_local_ray(1)
            assert ray.get(ray.put(41)) + 1 == 42
            # workers run at this process' priority, not Ray's default niceness 15 (bench/scale.py: a 2x slower
            # conversion than the process pool on a loaded machine)
            assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == os.nice(0)
        finally:
            ray.shutdown()
