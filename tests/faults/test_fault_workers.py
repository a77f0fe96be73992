"""Finding 5: a worker fault is one input's fault; forged volume headers are refused before allocating."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[2]


def _adapter_table() -> dict:
    """The adapter table convert dispatches on (``medrov.data.formats`` where it exists, else the native one)."""
    try:
        from medrov.data.formats import ADAPTERS
    except ImportError:
        from medrov.data.adapters import ADAPTERS
    return ADAPTERS


def _kill_on(item_id: str):
    _, load = _adapter_table()["voc"]

    def load_or_die(source, item, params):
        if item.item_id == item_id:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does to a worker
        return load(source, item, params)

    return load_or_die


def test_dead_worker_quarantines_its_input_and_the_run_goes_on(corpus, data_params, monkeypatch):
    corpus.voc(n=6)
    table = _adapter_table()
    # pool workers are forked from this process, so they inherit the patched adapter table
    monkeypatch.setitem(table, "voc", (table["voc"][0], _kill_on("img_003")))
    result = corpus.run(data_params, workers=2)
    s = result.summary
    assert (s["converted"], s["quarantined"], s["total"]) == (5, 1, 6), s
    row = result.rows("input").iloc[0]
    assert row["input"].endswith("img_003.jpg")
    assert "worker died: signal 9" in row["reason"] and "out of memory?" in row["reason"]
    assert sorted(result.manifest["item_id"]) == ["img_000", "img_001", "img_002", "img_004", "img_005"]


def _forged_nifti(path, shape, dtype=np.int16, payload=64):
    """A NIfTI whose header claims ``shape`` but which holds only ``payload`` voxel bytes."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * payload
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)


def test_header_claiming_more_than_the_budget_is_refused_unread(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_001"]["image"]
    _forged_nifti(bad, (2000, 2000, 400))  # 3.2 GB claimed by a ~400-byte file
    before = psutil.Process().memory_info().rss
    result = corpus.run(data_params)
    assert psutil.Process().memory_info().rss - before < 500 * 2**20  # nothing near 3 GB was allocated
    row = result.expect_one_bad(bad, ["memory budget", "data.max_volume_bytes"], good=2)
    assert len(row["reason"]) < 400


def test_header_claiming_more_than_the_file_holds(corpus, data_params):
    src = corpus.nifti_ct(n=3)
    bad = src.items["case_002"]["image"]
    _forged_nifti(bad, (256, 256, 64))  # 8 MiB claimed, within the budget, 64 bytes held
    corpus.run(data_params).expect_one_bad(bad, ["but the file holds", "forged header"], good=2)


def test_memory_budget_is_a_param(corpus):
    from medrov.config import load_params

    corpus.nifti_ct(n=2)
    params = load_params(ROOT / "params.yaml", ["data.workers=1", "data.max_volume_bytes=1000"]).data
    result = corpus.run(params)
    assert result.summary["converted"] == 0 and result.summary["quarantined"] == 2
    assert result.rows("input")["reason"].str.contains("over the memory budget").all()


def test_workers_exit_when_the_parent_is_killed(corpus, tmp_path):
    corpus.voc(n=4)
    sources = corpus.write()
    script = textwrap.dedent(f"""
        import time
        from medrov.config import load_params
        from medrov.data import convert

        def stuck(source, item, params):
            time.sleep(300)

        table = convert.ADAPTERS
        table["voc"] = (table["voc"][0], stuck)
        params = load_params({str(ROOT / "params.yaml")!r}, ["data.workers=2"]).data
        convert.run(params, sources_file={str(sources)!r}, out_dir={str(tmp_path / "out")!r}, progress=False)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    workers: list[psutil.Process] = []
    try:
        for _ in range(600):  # wait for the pool to start its two workers
            workers = psutil.Process(parent.pid).children(recursive=True)
            if len(workers) >= 2:
                break
            assert parent.poll() is None, "convert ended before its workers started"
            time.sleep(0.1)
        assert len(workers) >= 2, "the pool never started"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
    finally:
        for proc in workers:
            if proc.is_running():
                proc.kill()
        if parent.poll() is None:
            parent.kill()
