"""``medrov sources list`` and ``medrov sources check NAME ROOT`` on miniature official layouts."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from medrov.cli_sources import sources_app
from medrov.errors import ConfigError
from tests.conftest import SHARED_DATA
from tests.data.recipe_fixtures import BUILDERS, pair

runner = CliRunner()


def test_sources_list_shows_a_recipe_for_every_row():
    result = runner.invoke(sources_app, ["list"])
    assert result.exit_code == 0, result.output
    assert "37 of 37 catalogue sources have a recipe" in result.output
    amosf = next(line for line in result.output.splitlines() if line.startswith("AMOSF "))
    assert "AMOS22" in amosf and "msd" in amosf and "15/15" in amosf


def test_sources_check_counts_pairs_unpaired_and_unknown_ids(tmp_path):
    BUILDERS["FLARE22"](tmp_path)
    top = tmp_path / "FLARE22Train"
    pair(top / "images" / "FLARE22_Tr_0002_0000.nii.gz", top / "labels" / "FLARE22_Tr_0002.nii.gz", [1, 14])
    (top / "images" / "FLARE22_Tr_0003_0000.nii.gz").write_bytes(
        (top / "images" / "FLARE22_Tr_0001_0000.nii.gz").read_bytes()
    )
    result = runner.invoke(sources_app, ["check", "FLARE22", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "items (images with their labels): 2 from 2 image file(s)" in result.output
    assert (
        "unpaired or unusable inputs: 1" in result.output
        and "FLARE22_Tr_0003_0000.nii.gz: no label file" in result.output
    )
    assert 'native labels found {"1": 2, "13": 1, "14": 1}' in result.output
    assert 'unknown labels (not in the recipe\'s map): {"14": 1}' in result.output


def test_sources_check_exits_1_when_nothing_matches(tmp_path):
    result = runner.invoke(sources_app, ["check", "MSD_Spleen", str(tmp_path)])
    assert result.exit_code == 1
    assert "nothing matches this recipe's layout" in result.output


def test_sources_check_unknown_name_is_a_config_error(tmp_path):
    result = runner.invoke(sources_app, ["check", "NoSuch", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "no catalogue recipe named NoSuch" in str(result.exception)


def test_sources_check_on_the_real_bccd_download():
    root = SHARED_DATA / "bccd" / "BCCD"
    if not root.is_dir():
        pytest.skip(f"real BCCD not found at {root}")
    result = runner.invoke(sources_app, ["check", "BCCD", str(root)])
    assert result.exit_code == 0, result.output
    # the counts of the official release (../shared/CATALOG-LAYOUTS.md, computed from the repository)
    assert '"Platelets": 361, "RBC": 4155, "WBC": 372' in result.output
    assert "364 from 364" in result.output and '"train": 205' in result.output and '"test": 72' in result.output


def test_sources_check_compares_the_declared_dataset_json_labels(tmp_path):
    import json

    BUILDERS["MSD_Hippocampus"](tmp_path)
    task = tmp_path / "Task04_Hippocampus"
    (task / "dataset.json").write_text(
        json.dumps({"labels": {"0": "background", "1": "Anterior", "2": "Posterior", "3": "Extra"}})
    )
    result = runner.invoke(sources_app, ["check", "MSD_Hippocampus", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert '"1": "Anterior"' in result.output and "declared id 3 (Extra) is not in the recipe's map" in result.output
    (task / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    assert (
        "every declared id is in the recipe's map"
        in runner.invoke(sources_app, ["check", "MSD_Hippocampus", str(tmp_path)]).output
    )


def test_sources_list_markdown_is_the_readme_table():
    from medrov.data.recipe_check import recipe_markdown

    result = runner.invoke(sources_app, ["list", "--markdown"])
    assert result.exit_code == 0 and result.output.strip() == recipe_markdown()
