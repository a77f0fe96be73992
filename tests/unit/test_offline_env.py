"""One list of offline switches: medrov/env.py's, which the Makefile exports to every recipe (derived, not copied)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile_exports_exactly_the_switches_of_env_py():
    from medrov.env import offline_env

    # a bare environment: nothing set outside, so every value seen comes from the Makefile
    command = ["make", "-s", f"PYTHON={sys.executable}", "--eval", "showenv: ; @env", "showenv"]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    expected = offline_env()
    assert {key: seen.get(key) for key in expected} == expected
    assert "export YOLO_OFFLINE" not in (ROOT / "Makefile").read_text()  # no second, hand-kept list


def test_apply_sets_only_what_is_unset(monkeypatch):
    from medrov.env import OFFLINE_ENV, apply_offline_env

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("DVC_NO_ANALYTICS", raising=False)
    applied = apply_offline_env()
    assert applied["HF_HUB_OFFLINE"] == "0" and applied["DVC_NO_ANALYTICS"] == OFFLINE_ENV["DVC_NO_ANALYTICS"]
