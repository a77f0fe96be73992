"""The sources file's ``vocabulary:`` block and its checks: user classes are appended after the catalogue, names
may not collide with catalogue names or synonyms, and every problem of a sources file is reported at once with a
close-match suggestion."""

from __future__ import annotations

import pytest

from medrov.catalog import extend_vocabulary, load_vocabulary
from medrov.data.sources import resolve_sources, sources_vocabulary
from medrov.errors import ConfigError, SourcesFileError


def _file(tmp_path, text: str):
    (tmp_path / "data").mkdir(exist_ok=True)
    path = tmp_path / "sources.yaml"
    path.write_text(text)
    return path


def test_user_classes_are_appended_in_file_order_and_catalogue_ids_do_not_move():
    base = load_vocabulary()
    block = {
        "modalities": {"oct": "photo"},
        "classes": [
            {"name": "optic cup", "modalities": ["oct"], "split": "novel"},
            {"name": "melanoma", "synonyms": ["malignant melanoma"], "modalities": ["dermoscopy"]},
        ],
    }
    vocab, problems = extend_vocabulary(base, block)
    assert problems == []
    assert [c.name for c in vocab.classes[: len(base)]] == base.names
    assert [(c.id, c.name, c.split) for c in vocab.classes[len(base) :]] == [
        (157, "optic cup", "novel"),
        (158, "melanoma", "base"),
    ]
    assert vocab["malignant melanoma"].id == 158 and vocab.modalities["oct"] == "photo"
    assert len(base) == 157  # the cached catalogue itself is untouched


def test_collisions_name_the_entry_and_the_catalogue_class(tmp_path):
    path = _file(
        tmp_path,
        """
vocabulary:
  classes:
    - {name: Liver, modalities: [ct]}
    - {name: big vein, synonyms: [postcava], modalities: [ct]}
  modalities:
    mri: percentiles
sources: []
""",
    )
    with pytest.raises(SourcesFileError) as err:
        sources_vocabulary(path)
    problems = err.value.problems
    assert "vocabulary: class 'Liver': name collides with catalogue class 'liver'" in problems
    assert "vocabulary: class 'big vein': synonym 'postcava' collides with catalogue class 'inferior vena cava'" in (
        problems
    )
    assert "vocabulary: modality 'mri' is already a catalogue modality" in problems
    assert str(path) in str(err.value) and isinstance(err.value, ConfigError)


def test_every_problem_of_a_sources_file_is_reported_at_once_with_suggestions(tmp_path):
    path = _file(
        tmp_path,
        """
vocabulary:
  modalities: {oct: {normalisation: photo}}
  classes:
    - {name: optic cup, modalities: [oct, fundoscpy]}
sources:
  - name: A
    root: data
    modality: ctt
    format: mask2d
    classes: [livr]
  - name: B
    root: data
    modality: oct
    format: mask2d
    lable_map: {x: liver}
    label_map: {t: kidney tumour, c: optic cups}
  - name: C
    root: missing
    modality: ct
    format: volume
vocabulary_extra: 1
""",
    )
    with pytest.raises(SourcesFileError) as err:
        resolve_sources(path)
    problems = err.value.problems
    expected = [
        "unknown top-level key 'vocabulary_extra' (did you mean 'vocabulary'?)",
        "vocabulary: class 'optic cup': unknown modality 'fundoscpy' (did you mean 'fundoscopy'?)",
        "source B: unknown key 'lable_map' (did you mean 'label_map'?)",
        "source A: modality 'ctt' is not one of",
        "(did you mean 'ct'?)",
        "source A: class 'livr' is not in the vocabulary (did you mean 'liver'?)",
        "source C: root",
    ]
    text = " || ".join(problems)
    for part in expected:
        assert part in text, (part, problems)
    assert len(problems) == 6, problems
    assert str(err.value).startswith(f"{path}: 6 problems: [1] ")


def test_convert_reports_the_vocabulary_and_the_sources_problems_together(tmp_path):
    from medrov.config import load_params
    from medrov.data import convert
    from tests.conftest import ROOT

    path = _file(
        tmp_path,
        """
vocabulary:
  classes:
    - {name: melanoma, modalities: [dermoscpy]}
sources:
  - {name: A, root: data, modality: ct, format: mask2d, classes: [livr]}
""",
    )
    params = load_params(ROOT / "params.yaml", ["data.workers=1"])
    with pytest.raises(SourcesFileError) as err:
        convert.run(params.data, path, tmp_path / "omnis", progress=False)
    assert err.value.problems == [
        "vocabulary: class 'melanoma': unknown modality 'dermoscpy' (did you mean 'dermoscopy'?)",
        "source A: class 'livr' is not in the vocabulary (did you mean 'liver'?)",
    ]
    assert not (tmp_path / "omnis" / "manifest.parquet").exists()


def test_typos_in_a_valid_entry_are_all_listed(tmp_path):
    path = _file(
        tmp_path,
        """
sources:
  - name: B
    root: data
    modality: ct
    format: mask2d
    label_map: {t: kidney tumour, s: splen, ok: liver}
    presence: {pancreaz: 0}
""",
    )
    with pytest.raises(SourcesFileError) as err:
        resolve_sources(path)
    assert err.value.problems == [
        "source B: label 't' maps to 'kidney tumour', which is not in the vocabulary (did you mean 'kidney tumor'?)",
        "source B: label 's' maps to 'splen', which is not in the vocabulary (did you mean 'spleen'?)",
        "source B: presence override for 'pancreaz', which is not in the vocabulary (did you mean 'pancreas'?)",
    ]


def test_presence_group_needs_per_image_and_a_valid_regex(tmp_path):
    path = _file(
        tmp_path,
        """
sources:
  - {name: A, root: data, modality: ct, format: mask2d, presence_group: '(p\\d+)'}
  - {name: B, root: data, modality: ct, format: mask2d, presence: per_image, presence_group: '(unclosed'}
  - {name: C, root: data, modality: ct, format: mask2d, presence: per-image}
""",
    )
    with pytest.raises(SourcesFileError) as err:
        resolve_sources(path)
    text = " || ".join(err.value.problems)
    assert "source A: presence_group needs presence: per_image" in text
    assert "source B: presence_group: Value error, not a regular expression" in text
    assert (
        "source C: presence: Value error, must be per_image or a mapping" in text
        and "(did you mean 'per_image'?)" in text
    )


def test_a_user_class_can_be_used_by_a_source_and_its_modality_normalisation_is_resolved(tmp_path):
    path = _file(
        tmp_path,
        """
vocabulary:
  modalities: {oct: photo, pet: percentiles}
  classes:
    - {name: retinal fluid, modalities: [oct]}
sources:
  - {name: A, root: data, modality: oct, format: mask2d, classes: [fluid], label_map: {fluid: retinal fluid}}
  - {name: B, root: data, modality: pet, format: volume}
  - {name: C, root: data, modality: ct, format: volume}
""",
    )
    (a, b, c), _ = resolve_sources(path)
    assert a.class_map == {"fluid": "retinal fluid"} and a.normalisation == "photo"
    assert b.normalisation == "percentiles" and c.normalisation == "hu_window"
