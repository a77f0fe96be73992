"""params.yaml loading: strict keys, dotted overrides, range checks, flattening."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medrov.config import DataParams, Params, SplitParams, apply_overrides, flatten, load_params
from medrov.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_real_params_file_loads():
    params = load_params(PARAMS)
    assert isinstance(params, Params)
    raw = yaml.safe_load(PARAMS.read_text())
    # the values come from the file, not only from the defaults
    assert params.data.workers == raw["data"]["workers"]
    assert list(params.data.ct_window) == [float(v) for v in raw["data"]["ct_window"]]
    assert params.data.boxes == raw["data"]["boxes"]
    assert params.demo.volume_shape == tuple(raw["demo"]["volume_shape"])
    split = params.data.split
    assert split.train + split.val + split.test == pytest.approx(1.0)


def test_values_in_a_temp_file_are_used(tmp_path):
    path = _write(tmp_path, {"data": {"workers": 7, "ct_window": [-100, 300], "split": {"seed": 9}}})
    params = load_params(path)
    assert params.data.workers == 7
    assert params.data.ct_window == (-100.0, 300.0)
    assert params.data.split.seed == 9
    assert params.data.split.train == pytest.approx(0.7)  # defaults fill the rest
    assert params.demo == Params().demo


def test_unknown_key_raises_naming_it(tmp_path):
    path = _write(tmp_path, {"data": {"workers": 1, "wokers": 2}})
    with pytest.raises(ConfigError, match="wokers") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_unknown_section_raises(tmp_path):
    path = _write(tmp_path, {"trainig": {"epochs": 3}})
    with pytest.raises(ConfigError, match="trainig"):
        load_params(path)


def test_unknown_nested_key_raises(tmp_path):
    path = _write(tmp_path, {"data": {"split": {"tran": 0.7}}})
    with pytest.raises(ConfigError, match="tran"):
        load_params(path)


def test_missing_explicit_file_raises(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_malformed_yaml_and_non_mapping_raise(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_params(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(listing)


def test_dotted_override_works():
    params = load_params(PARAMS, ["data.workers=1"])
    assert params.data.workers == 1
    assert isinstance(params.data.workers, int)


def test_overrides_parse_yaml_values():
    params = load_params(
        PARAMS, ["data.ct_window=[-1000, 1000]", "data.boxes=slice", "data.split.seed=42", "data.ray_address=null"]
    )
    assert params.data.ct_window == (-1000.0, 1000.0)
    assert params.data.boxes == "slice"
    assert params.data.split.seed == 42
    assert params.data.ray_address is None


def test_override_reversed_ct_window_raises():
    with pytest.raises(ConfigError, match="ct_window"):
        load_params(PARAMS, ["data.ct_window=[100,0]"])


def test_override_out_of_range_values_raise():
    with pytest.raises(ConfigError, match="workers"):
        load_params(PARAMS, ["data.workers=0"])
    with pytest.raises(ConfigError, match="boxes"):
        load_params(PARAMS, ["data.boxes=blobs"])
    with pytest.raises(ConfigError, match="mri_percentiles"):
        load_params(PARAMS, ["data.mri_percentiles=[99,1]"])


def test_layout_and_pixel_sample_are_checked():
    params = load_params(PARAMS, ["data.layout=shards", "validate.pixel_sample=500", "validate.workers=3"])
    assert params.data.layout == "shards" and params.validate_.pixel_sample == 500 and params.validate_.workers == 3
    with pytest.raises(ConfigError, match="layout"):
        load_params(PARAMS, ["data.layout=zip"])
    with pytest.raises(ConfigError, match="pixel_sample"):
        load_params(PARAMS, ["validate.pixel_sample=2.5"])  # above 1 it is a count of images
    with pytest.raises(ConfigError, match="pixel_sample"):
        load_params(PARAMS, ["validate.pixel_sample=0"])


def test_override_unknown_key_raises():
    with pytest.raises(ConfigError, match="nonsense"):
        load_params(PARAMS, ["data.nonsense=1"])


def test_split_fractions_must_sum_to_one():
    with pytest.raises(ConfigError, match="sum to 1"):
        load_params(PARAMS, ["data.split.train=0.5"])
    with pytest.raises(ValueError):
        SplitParams(train=0.6, val=0.2, test=0.1)
    ok = load_params(PARAMS, ["data.split.train=0.8", "data.split.val=0.1", "data.split.test=0.1"])
    assert ok.data.split.train == pytest.approx(0.8)


def test_override_without_equals_raises():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_params(PARAMS, ["data.workers"])


def test_override_with_empty_key_raises():
    with pytest.raises(ConfigError, match="empty key"):
        load_params(PARAMS, ["=3"])


def test_override_into_a_scalar_raises():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"data": {"workers": 2}}, ["data.workers.x=1"])


def test_apply_overrides_does_not_mutate_its_input():
    raw = {"data": {"workers": 2, "split": {"seed": 0}}}
    out = apply_overrides(raw, ["data.split.seed=5", "demo.seed=3"])
    assert raw == {"data": {"workers": 2, "split": {"seed": 0}}}
    assert out == {"data": {"workers": 2, "split": {"seed": 5}}, "demo": {"seed": 3}}


def test_assignment_is_validated():
    data = DataParams()
    with pytest.raises(ValueError):
        data.workers = 0


def test_flatten_gives_dotted_keys():
    params = load_params(PARAMS, ["data.split.seed=3"])
    flat = flatten(params)
    assert flat["data.split.train"] == pytest.approx(params.data.split.train)
    assert flat["data.split.seed"] == 3
    assert flat["data.workers"] == params.data.workers
    assert flat["data.ct_window"] == list(params.data.ct_window)
    assert isinstance(flat["data.ct_window"], list)
    assert flat["demo.volume_shape"] == list(params.demo.volume_shape)
    assert "data.split" not in flat and "data" not in flat
    assert all(not isinstance(v, (dict, tuple)) for v in flat.values())
    # every leaf of every section is there
    assert {k for k in flat if k.startswith("data.split.")} == {f"data.split.{k}" for k in SplitParams.model_fields}
