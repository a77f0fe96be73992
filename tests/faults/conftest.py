"""Fault-injection tests (issue 15): the builders of tests/data/conftest.py, loaded from there (one copy)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_DATA_CONFTEST = Path(__file__).resolve().parents[1] / "data" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_medrov_data_corpus", _DATA_CONFTEST)
_corpus = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_corpus)
Corpus = _corpus.Corpus


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    return Corpus(tmp_path)
