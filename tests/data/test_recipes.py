"""Every catalogue recipe converts a miniature copy of its source's official download (``pytest -k recipe``)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from medrov.catalog import load_catalog, load_vocabulary
from medrov.catalog.recipes import load_recipes
from medrov.config import DataParams
from medrov.data.recipe_adapter import enumerate_recipe, load_recipe
from medrov.data.sources import SourceSpec, resolve_source
from tests.data.recipe_fixtures import BUILDERS

ROWS = sorted(load_catalog())


def one_line_source(name: str, root: Path, **extra):
    """What a user writes: ``- {name: NAME, root: ROOT}``."""
    vocab = load_vocabulary()
    return resolve_source(SourceSpec(name=name, root=str(root), **extra), root, vocab, root / "sources.yaml")


def convert_in_process(source, params: DataParams | None = None):
    params = params or DataParams()
    items, skipped = enumerate_recipe(source)
    boxes: Counter[str] = Counter()
    for item in items:
        samples, _ = load_recipe(source, item, params)
        boxes.update(b.label for s in samples for b in s.boxes)
    return items, skipped, dict(boxes)


def test_every_catalogue_row_has_a_recipe_and_a_fixture():
    assert sorted(load_recipes()) == ROWS and len(ROWS) == 37
    assert sorted(BUILDERS) == ROWS


@pytest.mark.parametrize("row", ROWS)
def test_recipe_fixture_converts(row, tmp_path, caplog):
    expected = BUILDERS[row](tmp_path)
    source = one_line_source(row, tmp_path)
    assert source.format == "recipe" and source.recipe.row == row
    with caplog.at_level(logging.WARNING, logger="medrov.data.recipe_adapter"):
        items, skipped, boxes = convert_in_process(source)
    assert boxes == expected, f"{row}: skipped {[(s.input, s.reason) for s in skipped]}"
    if source.recipe.unverified:
        assert f"{row}: recipe {source.recipe.name} relies on {len(source.recipe.unverified)} UNVERIFIED" in caplog.text
    assert len({i.item_id for i in items}) == len(items)
