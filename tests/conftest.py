"""Test session set-up: offline switches, a shrunken copy of the real params, shared data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDROV_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


def pytest_configure(config: pytest.Config) -> None:
    from medrov.env import apply_offline_env

    apply_offline_env()


@pytest.fixture
def data_params():
    """The project's real ``data`` section, single-process so tests are deterministic and quiet."""
    from medrov.config import load_params

    return load_params(ROOT / "params.yaml", ["data.workers=1"]).data


@pytest.fixture
def shared_data() -> Path:
    """The shared real datasets; tests that need them skip with a reason only when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA
