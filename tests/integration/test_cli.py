"""The medrov CLI as a user runs it: one readable error line and a non-zero exit code; the summary line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def medrov(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDROV_ROOT": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "medrov", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_unknown_param_key_is_one_readable_line_and_exit_2():
    result = medrov("convert", "-S", "data.wrokers=1")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "ConfigError" in errors[0] and "data.wrokers" in errors[0] and "params.yaml" in errors[0]


def test_bad_param_value_names_the_key():
    result = medrov("convert", "-S", "data.ct_window=[1000,-500]")
    assert result.returncode == 2
    assert "ct_window" in result.stderr


def test_missing_sources_file_names_the_file(tmp_path):
    result = medrov("convert", "--sources", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "not found" in result.stderr


def test_convert_prints_the_accounting_line(tmp_path):
    demo = medrov(
        "demo-sources",
        "--out",
        str(tmp_path / "raw"),
        "-S",
        "demo.ct_volumes=1",
        "-S",
        "demo.mri_volumes=1",
        "-S",
        "demo.xray_images=2",
        "-S",
        "demo.microscopy_images=2",
        "-S",
        "demo.endoscopy_images=2",
    )
    assert demo.returncode == 0, demo.stderr
    sources = (ROOT / "data" / "sources.yaml").read_text().replace("raw/synthetic/", f"{tmp_path}/raw/")
    sources = sources.split("  # ---- real public data")[0]
    (tmp_path / "sources.yaml").write_text(sources)
    (tmp_path / "raw" / "SynthChestXray" / "images" / "cxr_001.png").write_bytes(b"not a png")
    result = medrov(
        "convert", "--sources", str(tmp_path / "sources.yaml"), "--out", str(tmp_path / "omnis"), "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    assert "converted 8, quarantined 1, total 9" in result.stdout
    assert "quarantine report:" in result.stdout
    quarantine = (tmp_path / "omnis" / "quarantine.csv").read_text()
    assert "cxr_001.png" in quarantine and "cannot read image" in quarantine


def test_help_lists_the_commands():
    result = medrov("--help")
    assert result.returncode == 0
    assert "convert" in result.stdout and "demo-sources" in result.stdout


def test_sources_check_exit_codes(tmp_path):
    from tests.data.recipe_fixtures import BUILDERS

    BUILDERS["PROMISE"](tmp_path / "promise")
    found = medrov("sources", "check", "PROMISE", str(tmp_path / "promise"))
    assert found.returncode == 0 and "items (images with their labels): 1" in found.stdout
    (tmp_path / "empty").mkdir()
    empty = medrov("sources", "check", "PROMISE", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "nothing matches" in empty.stdout
    unknown = medrov("sources", "check", "NoSuch", str(tmp_path))
    assert unknown.returncode == 2 and "no catalogue recipe named NoSuch" in unknown.stderr
