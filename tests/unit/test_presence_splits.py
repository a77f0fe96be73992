"""The presence matrix (1 annotated / 0 unannotated / -1 impossible) and hash-based patient splits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from medrov.catalog import load_catalog, load_vocabulary
from medrov.config import SplitParams
from medrov.data.presence import ABSENT, ANNOTATED, UNANNOTATED, presence_matrix, presence_row
from medrov.data.sources import ResolvedSource, SourceSpec, resolve_source
from medrov.data.splits import SPLITS, split_of
from medrov.errors import ConfigError


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def _resolve(tmp_path: Path, vocab, **spec) -> ResolvedSource:
    spec.setdefault("root", str(tmp_path / spec["name"]))
    return resolve_source(SourceSpec(**spec), base=tmp_path, vocab=vocab, where=tmp_path / "sources.yaml")


def _liver_ct(tmp_path, vocab, **extra) -> ResolvedSource:
    return _resolve(tmp_path, vocab, name="MyLiverCT", modality="ct", format="nifti", label_map={"1": "liver"}, **extra)


# ---------------------------------------------------------------- presence


def test_new_ct_source_row_is_derived_from_modality(tmp_path, vocab):
    src = _liver_ct(tmp_path, vocab)
    assert "MyLiverCT" not in load_catalog()
    assert src.catalog_presence is None
    assert src.format == "volume" and src.dims == 3
    row = presence_row(src, vocab)
    assert set(row) == set(vocab.names)
    assert row["liver"] == ANNOTATED == 1
    assert row["spleen"] == UNANNOTATED == 0
    assert row["platelets"] == ABSENT == -1
    assert row["red blood cell"] == -1
    assert row["colon polyp"] == -1  # endoscopy only
    # exactly one class is annotated; every CT class is 0, every non-CT class -1
    assert [k for k, v in row.items() if v == 1] == ["liver"]
    for cls in vocab.classes:
        if cls.name != "liver":
            assert row[cls.name] == (0 if "ct" in cls.modalities else -1), cls.name


def test_presence_override_is_applied(tmp_path, vocab):
    row = presence_row(_liver_ct(tmp_path, vocab, presence={"spleen": -1}), vocab)
    assert row["spleen"] == -1
    assert row["liver"] == 1
    assert row["pancreas"] == 0  # untouched classes keep the derived value


def test_presence_override_can_mark_an_impossible_class_unannotated(tmp_path, vocab):
    row = presence_row(_liver_ct(tmp_path, vocab, presence={"platelets": 0}), vocab)
    assert row["platelets"] == 0


def test_presence_override_accepts_synonyms(tmp_path, vocab):
    src = _resolve(
        tmp_path,
        vocab,
        name="MySmear",
        modality="microscopy",
        format="coco",
        label_map={"RBC": "red blood cell"},
        presence={"WBC": -1},
    )
    row = presence_row(src, vocab)
    assert row["white blood cell"] == -1
    assert row["red blood cell"] == 1
    assert row["platelets"] == 0


def test_presence_override_on_an_annotated_class_raises(tmp_path, vocab):
    src = _liver_ct(tmp_path, vocab, presence={"liver": 0})
    with pytest.raises(ConfigError, match="liver"):
        presence_row(src, vocab)


def test_presence_override_for_unknown_class_is_rejected_at_resolve(tmp_path, vocab):
    with pytest.raises(ConfigError, match="not a class"):
        _liver_ct(tmp_path, vocab, presence={"not a class": -1})


def test_ignored_labels_are_not_annotated(tmp_path, vocab):
    src = _resolve(tmp_path, vocab, name="MyCT2", modality="ct", format="volume", label_map={"1": "liver", "2": None})
    row = presence_row(src, vocab)
    assert [k for k, v in row.items() if v == 1] == ["liver"]


def test_catalogue_source_gets_the_papers_row(tmp_path, vocab):
    src = _resolve(tmp_path, vocab, name="BCCD")
    assert src.modality == "microscopy"
    # a catalogue name with only a root reads its official layout through its recipe (Pascal VOC for BCCD)
    assert src.format == "recipe" and src.recipe is not None and src.recipe.row == "BCCD"
    assert src.catalog_presence is not None
    assert src.class_map == {"RBC": "red blood cell", "WBC": "white blood cell", "Platelets": "platelets"}
    row = presence_row(src, vocab)
    assert row["platelets"] == 1
    assert row["red blood cell"] == 1
    assert row["white blood cell"] == 1
    assert row["liver"] == -1
    assert row["spleen"] == -1
    assert sorted(k for k, v in row.items() if v == 1) == ["platelets", "red blood cell", "white blood cell"]


def test_presence_matrix_rows_columns_and_dtype(tmp_path, vocab):
    liver = _liver_ct(tmp_path, vocab)
    bccd = _resolve(tmp_path, vocab, name="BCCD")
    frame = presence_matrix([liver, bccd], vocab)
    assert list(frame.index) == ["MyLiverCT", "BCCD"]
    assert frame.index.name == "source"
    assert list(frame.columns) == vocab.names
    assert str(frame.dtypes.unique()[0]) == "int8" and len(frame.dtypes.unique()) == 1
    assert frame.loc["MyLiverCT", "liver"] == 1
    assert frame.loc["MyLiverCT", "spleen"] == 0
    assert frame.loc["MyLiverCT", "platelets"] == -1
    assert frame.loc["BCCD", "platelets"] == 1
    assert frame.loc["BCCD", "liver"] == -1
    assert set(frame.to_numpy().ravel()) <= {-1, 0, 1}
    assert frame.loc["BCCD"].to_dict() == presence_row(bccd, vocab)


# ---------------------------------------------------------------- splits


def test_split_is_deterministic():
    params = SplitParams(seed=3)
    first = [split_of("SrcA", f"patient_{i}", params) for i in range(200)]
    second = [split_of("SrcA", f"patient_{i}", SplitParams(seed=3)) for i in range(200)]
    assert first == second
    assert set(first) <= set(SPLITS)


def test_changing_the_seed_moves_some_groups():
    a = [split_of("SrcA", f"g{i}", SplitParams(seed=0)) for i in range(200)]
    b = [split_of("SrcA", f"g{i}", SplitParams(seed=1)) for i in range(200)]
    assert a != b
    assert sum(x != y for x, y in zip(a, b)) > 20


def test_source_name_is_part_of_the_hash():
    params = SplitParams()
    a = [split_of("SrcA", f"g{i}", params) for i in range(200)]
    b = [split_of("SrcB", f"g{i}", params) for i in range(200)]
    assert a != b


def test_adding_other_groups_never_moves_a_group():
    params = SplitParams()
    mine = [f"case_{i:03d}" for i in range(50)]
    alone = {g: split_of("Src", g, params) for g in mine}
    for extra in range(1, 6):
        others = [f"other_{extra}_{j}" for j in range(100 * extra)]
        batch = others[: len(others) // 2] + mine + others[len(others) // 2 :]
        together = {g: split_of("Src", g, params) for g in batch}
        assert {g: together[g] for g in mine} == alone


def test_fractions_are_respected_over_many_groups():
    params = SplitParams()  # 0.7 / 0.15 / 0.15
    counts = Counter(split_of("Src", f"patient_{i}", params) for i in range(2000))
    assert set(counts) == set(SPLITS)
    assert abs(counts["train"] / 2000 - 0.7) < 0.03
    assert abs(counts["val"] / 2000 - 0.15) < 0.03
    assert abs(counts["test"] / 2000 - 0.15) < 0.03


def test_other_fractions_are_respected():
    params = SplitParams(train=0.5, val=0.25, test=0.25, seed=7)
    counts = Counter(split_of("Src", f"p{i}", params) for i in range(2000))
    assert abs(counts["train"] / 2000 - 0.5) < 0.03
    assert abs(counts["val"] / 2000 - 0.25) < 0.03
    assert abs(counts["test"] / 2000 - 0.25) < 0.03


def test_all_train():
    params = SplitParams(train=1.0, val=0.0, test=0.0)
    assert {split_of("Src", f"p{i}", params) for i in range(2000)} == {"train"}


def test_all_test():
    params = SplitParams(train=0.0, val=0.0, test=1.0)
    assert {split_of("Src", f"p{i}", params) for i in range(500)} == {"test"}


def test_no_val():
    params = SplitParams(train=0.8, val=0.0, test=0.2)
    splits = {split_of("Src", f"p{i}", params) for i in range(500)}
    assert splits == {"train", "test"}
