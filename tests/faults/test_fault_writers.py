"""Finding 4: one writer per dataset folder; a second convert fails at once naming the holder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest


def test_second_convert_fails_at_once_naming_the_holder(corpus, data_params):
    from medrov.data import convert
    from medrov.errors import OutputBusy

    corpus.voc(n=2)
    corpus.write()
    corpus.out.mkdir(parents=True)
    # the holder is a real second process that takes the lock through the same code and waits
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from medrov.data.convert import writer_lock
            with writer_lock(Path({str(corpus.out)!r}), ["TinyVOC"], whole=True):
                print("locked", flush=True)
                sys.stdin.read()
        """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputBusy) as err:
            convert.run(data_params, sources_file=corpus.sources_file, out_dir=corpus.out, progress=False)
        message = str(err.value)
        assert "\n" not in message and f"pid {holder.pid}" in message and "another convert" in message
        with pytest.raises(OutputBusy, match="source TinyVOC"):
            convert.run(
                data_params, sources_file=corpus.sources_file, out_dir=corpus.out, progress=False, sources=["TinyVOC"]
            )
        assert not (corpus.out / "manifest.parquet").exists()
    finally:
        holder.communicate("", timeout=30)
    # released: the same run now goes through, and no holder note is left in the dataset folder
    summary = convert.run(data_params, sources_file=corpus.sources_file, out_dir=corpus.out, progress=False)
    assert summary["converted"] == 2
    assert not list((corpus.out / ".locks").glob("*.holder"))


def test_disjoint_filtered_runs_share_the_folder(corpus, data_params):
    from medrov.data import convert

    corpus.voc(n=2)
    corpus.coco(n=2)
    corpus.write()
    with convert.writer_lock(corpus.out, ["TinyVOC"], whole=False):
        summary = convert.run(
            data_params, sources_file=corpus.sources_file, out_dir=corpus.out, progress=False, sources=["TinyCOCO"]
        )
    assert summary["converted"] == 2


def test_temporary_names_are_unique_per_process(tmp_path):
    from medrov.data.convert import TMP_SUFFIX, _tmp_name

    a, b = _tmp_name(tmp_path / "x.png"), _tmp_name(tmp_path / "x.png")
    assert a != b and str(os.getpid()) in a.name and a.name.endswith(TMP_SUFFIX)
