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


def _built(row: str, root: Path, **extra):
    BUILDERS[row](root)
    return one_line_source(row, root, **extra)


@pytest.mark.parametrize(
    "row, split_of",
    [
        ("ACDC", {"patient001": "train", "patient101": "test"}),
        ("AMOSF", {"amos_0001": "train", "amos_0003": "val"}),
        ("BCCD", {"BloodImage_00000": "train", "BloodImage_00001": "test"}),
        ("CXR8", {"00000001_000": "train", "00000002_000": "test"}),
        ("TotalSegmentorCT", {"s0000": "val"}),
        ("ISIC", {"ISIC_0000000": "train", "ISIC_0000003": "test"}),
        ("M5LCM", {"0001_1000x": "val"}),
    ],
)
def test_recipe_official_splits(row, split_of, tmp_path):
    items, _, _ = convert_in_process(_built(row, tmp_path))
    got = {key: {i.split for i in items if key in i.item_id or key in i.inputs[0]} for key in split_of}
    assert got == {key: {split} for key, split in split_of.items()}


@pytest.mark.parametrize(
    "row, unpaired, reason",
    [
        ("AbdomenAtlas", "BDMAP_00000002/ct.nii.gz", "no label file"),
        ("BHSD", "imagesTs/ID_0a1b2c3d_ID_0123456789.nii.gz", "no label file"),
        ("MnMs", "B1C2D3_sa.nii.gz", "frames unknown"),
    ],
)
def test_recipe_reports_unpaired_inputs(row, unpaired, reason, tmp_path):
    _, skipped, _ = convert_in_process(_built(row, tmp_path))
    assert [s.reason for s in skipped if s.input.endswith(unpaired)] and reason in next(
        s.reason for s in skipped if s.input.endswith(unpaired)
    )


def test_recipe_skips_macos_metadata_and_other_rows(tmp_path):
    items, skipped, _ = convert_in_process(_built("MSD_Spleen", tmp_path))
    assert [Path(i.inputs[0]).name for i in items] == ["spleen_2.nii.gz"] and not skipped
    items, _, _ = convert_in_process(_built("AMOSM", tmp_path / "amos"))
    assert sorted(Path(i.inputs[0]).name for i in items) == [
        "amos_0002.nii.gz"
    ]  # F cases and the MRI id 507 are not AMOSM


def test_recipe_4d_channel_and_frame_selection(tmp_path):
    items, _, _ = convert_in_process(_built("MnMs", tmp_path / "mnms"))
    assert sorted(i.item_id.rsplit("_", 1)[-1] for i in items) == ["t00", "t03"]  # ED and ES from the CSV
    brain = _built("MSD_Brain", tmp_path / "brain")
    assert [i.spec["index"] for i in enumerate_recipe(brain)[0]] == [0]  # FLAIR
    every = one_line_source(
        "MSD_Brain", tmp_path / "brain", overrides={"select": {"axis": "channel", "indices": "all"}}
    )
    items, _, boxes = convert_in_process(every)
    assert [i.spec["index"] for i in items] == [0, 1, 2, 3] and boxes["cerebral edema"] == 8


def test_recipe_new_source_following_a_shared_layout_needs_only_yaml(tmp_path):
    from tests.data.recipe_fixtures import pair

    task = tmp_path / "Task03_Liver"
    pair(task / "imagesTr" / "liver_0.nii.gz", task / "labelsTr" / "liver_0.nii.gz", [1, 2])
    source = one_line_source("MyLiver", task, layout="msd", modality="ct", label_map={1: "liver", 2: "spleen"})
    assert source.format == "recipe" and source.recipe.layout == "msd"
    _, _, boxes = convert_in_process(source)
    assert boxes == {"liver": 2, "spleen": 2}


def test_recipe_unknown_label_id_quarantines_naming_the_file(tmp_path):
    from medrov.errors import SourceReadError
    from tests.data.recipe_fixtures import pair

    root = tmp_path / "FLARE22"
    pair(root / "images" / "FLARE22_Tr_0002_0000.nii.gz", root / "labels" / "FLARE22_Tr_0002.nii.gz", [1, 14])
    source = one_line_source("FLARE22", root)
    (item,), _ = enumerate_recipe(source)
    with pytest.raises(SourceReadError, match=r"unknown label ids \[14\]") as err:
        load_recipe(source, item, DataParams())
    assert "FLARE22_Tr_0002.nii.gz" in str(err.value)


def test_recipe_source_converts_through_convert_run(tmp_path):
    """The one-line entry goes through the real converter: files written, splits kept, presence row used."""
    import pandas as pd
    import yaml

    from medrov.data import convert

    BUILDERS["ACDC"](tmp_path / "acdc")
    BUILDERS["BUSI"](tmp_path / "busi")
    sources = tmp_path / "sources.yaml"
    sources.write_text(
        yaml.safe_dump({"sources": [{"name": "ACDC", "root": "acdc"}, {"name": "BUSI", "root": "busi"}]})
    )
    summary = convert.run(DataParams(workers=1), sources, tmp_path / "omnis", progress=False)
    assert summary["sources"]["ACDC"]["images"] == 6 and summary["sources"]["BUSI"]["images"] == 2
    manifest = pd.read_parquet(tmp_path / "omnis" / "manifest.parquet")
    assert set(manifest.loc[manifest.source == "ACDC", "split"]) == {"train", "test"}
    again = convert.run(DataParams(workers=1), sources, tmp_path / "omnis", progress=False)
    assert again["reused"] == again["total"]


def test_recipe_maps_agree_with_presence_rows():
    """Every mapped class has M = 1 in the row; every M = 1 class is mapped (or listed as not in the release)."""
    from medrov.catalog.recipes import presence_mismatches

    vocab, catalog = load_vocabulary(), load_catalog()
    problems = [
        p for row, recipe in load_recipes().items() for p in presence_mismatches(recipe, catalog[row].presence, vocab)
    ]
    assert problems == []


def test_recipe_presence_check_catches_a_wrong_map():
    from medrov.catalog.recipes import presence_mismatches

    vocab, catalog = load_vocabulary(), load_catalog()
    amosf = load_recipes()["AMOSF"]
    swapped = amosf.model_copy(update={"labels": {**amosf.labels, "15": "prostate"}})  # AMOSF is the female row
    problems = presence_mismatches(swapped, catalog["AMOSF"].presence, vocab)
    assert any("'prostate', coded -1" in p for p in problems) and any("'uterus' is coded 1" in p for p in problems)
    released = swapped.model_copy(
        update={"labels": {**amosf.labels, "15": None}, "not_in_release": {"uterus": "female cases removed"}}
    )
    assert presence_mismatches(released, catalog["AMOSF"].presence, vocab) == []


def test_recipe_yaml_errors_name_the_recipe():
    from medrov.catalog.recipes import build_recipes
    from medrov.errors import ConfigError

    with pytest.raises(ConfigError, match=r"recipe X: unknown layout 'nope'"):
        build_recipes({"recipes": {"X": {"layout": "nope"}}}, Path("recipes.yaml"))
    with pytest.raises(ConfigError, match=r"(?s)recipe Y \(row Y\).*globz.*Extra inputs"):
        build_recipes(
            {
                "layouts": {},
                "recipes": {
                    "Y": {"dims": 2, "annotation": "voc", "images": "*.xml", "image": "{stem}.jpg", "globz": 1}
                },
            },
            Path("recipes.yaml"),
        )


def test_recipe_table_in_readme_is_current():
    from medrov.data.recipe_check import TABLE_END, TABLE_START, recipe_markdown
    from tests.conftest import ROOT

    text = (ROOT / "README.md").read_text()
    table = text[text.index(TABLE_START) : text.index(TABLE_END) + len(TABLE_END)]
    assert table == recipe_markdown(), (
        "README recipe table is stale: paste the output of `medrov sources list --markdown`"
    )
    assert table.count("\n| ") == 38  # header + 37 rows


def test_recipe_row_filter_without_its_metadata_file_is_a_clear_error(tmp_path):
    from medrov.errors import SourceReadError

    source = _built("AMOSF", tmp_path)
    (tmp_path / "amos22" / "labeled_data_meta_0000_0599.csv").unlink()
    with pytest.raises(SourceReadError, match=r"metadata file '\*\*/labeled_data_meta\*\.csv' not found"):
        enumerate_recipe(source)


def test_recipe_intensity_offset_is_removed_before_the_ct_window(tmp_path):
    """KiPA22 volumes are stored with +1000: after the recipe's offset they equal the same scan stored in HU."""
    import numpy as np

    from tests.data.recipe_fixtures import label_volume, nii

    for folder, value in (("kipa", 1040.0), ("plain", 40.0)):
        nii(tmp_path / folder / "train" / "image" / "0.nii.gz", np.full((16, 16, 2), value, dtype=np.float32))
        nii(tmp_path / folder / "train" / "label" / "0.nii.gz", label_volume([2]))
    params = DataParams()
    kipa = one_line_source("KIPA22", tmp_path / "kipa")
    plain = one_line_source("KIPA22", tmp_path / "plain", overrides={"intensity_offset": 0})
    (a,), _ = enumerate_recipe(kipa)
    (b,), _ = enumerate_recipe(plain)
    pixels_a = load_recipe(kipa, a, params)[0][0].image
    pixels_b = load_recipe(plain, b, params)[0][0].image
    np.testing.assert_array_equal(pixels_a, pixels_b)
    assert 0 < int(pixels_a[0, 0]) < 255  # 40 HU lies inside the default window


def test_recipe_bccd_pairs_the_real_download_like_the_voc_adapter():
    """On the real BCCD copy, the recipe finds the same items, files and official splits as the VOC adapter."""
    from medrov.data.adapters import enumerate_voc
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "bccd" / "BCCD"
    if not root.is_dir():
        pytest.skip(f"real BCCD not found at {root}")
    recipe_items, recipe_skipped = enumerate_recipe(one_line_source("BCCD", root))
    voc_items, voc_skipped = enumerate_voc(one_line_source("BCCD", root, format="voc", split="imagesets"))
    assert not recipe_skipped and not voc_skipped and len(recipe_items) == 364
    as_tuples = lambda items: sorted((i.item_id, tuple(i.inputs), i.split) for i in items)  # noqa: E731
    assert as_tuples(recipe_items) == as_tuples(voc_items)


def test_recipe_entry_conflicts_are_config_errors(tmp_path):
    from medrov.errors import ConfigError

    with pytest.raises(ConfigError, match="either format/images/annotations/cases or recipe/layout"):
        one_line_source("Mine", tmp_path, recipe="MSD_Spleen", format="volume")
    with pytest.raises(ConfigError, match="no recipe 'MSD_Nope'"):
        one_line_source("Mine", tmp_path, recipe="MSD_Nope")
    with pytest.raises(ConfigError, match="unknown layout 'mdd'"):
        one_line_source("Mine", tmp_path, layout="mdd", modality="ct")
    with pytest.raises(ConfigError, match="'overrides' needs a recipe"):
        one_line_source(
            "Mine",
            tmp_path,
            modality="ct",
            format="volume",
            images="*.nii.gz",
            labels="{name}",
            overrides={"threshold": 1},
        )
    borrowed = one_line_source("SpleenCopy", tmp_path, recipe="MSD_Spleen")
    assert (
        borrowed.recipe.row == "MSD_Spleen" and borrowed.catalog_presence["spleen"] == 1 and borrowed.modality == "ct"
    )
