"""medrov.pipeline: the error lines a failed step is reported with, the run summary, a failing command."""

from __future__ import annotations

import json
import sys

import pytest

from medrov import pipeline
from medrov.errors import StepFailed


def test_error_lines_keep_what_says_why():
    output = "\n".join(
        [
            "Running stage 'convert':",
            "> medrov convert --no-progress",
            "12:00:01 INFO medrov.convert: SynthPolyp: 4 input(s) found",
            "error: ConfigError: params.yaml: data.boxes: Input should be 'components' or 'slice'",
            "ERROR: failed to reproduce 'convert': failed to run: medrov convert, exited with 2",
        ]
    )
    assert pipeline.error_lines(output) == [
        "error: ConfigError: params.yaml: data.boxes: Input should be 'components' or 'slice'",
        "ERROR: failed to reproduce 'convert': failed to run: medrov convert, exited with 2",
    ]
    assert pipeline.error_lines("FAIL boxes.x_center: 1 of 10 rows\nok") == ["FAIL boxes.x_center: 1 of 10 rows"]


def test_failed_command_raises_with_its_error_line(tmp_path):
    script = "import sys; print('working'); print('ValueError: the reason', file=sys.stderr); sys.exit(3)"
    with pytest.raises(StepFailed, match=r"the step failed \(exit 3\): ValueError: the reason") as err:
        pipeline.run_command([sys.executable, "-c", script], tmp_path, what="the step")
    assert str(tmp_path) in str(err.value)
    assert "working" in pipeline.run_command([sys.executable, "-c", "print('working')"], tmp_path)


def test_summary_markdown_lists_steps_and_headline_metrics():
    steps = [
        {"step": "dvc repro", "result": "ran convert, validate", "seconds": 3.5},
        {"step": "promote", "result": "skipped"},
    ]
    metrics = {
        "convert.json": {"images": 95, "boxes": 185, "quarantined": 1, "sources": {}},
        "eval.json": {"map50": 0.123456, "map50_95": 0.05, "base": 0.2, "novel": 0.0},
    }
    text = pipeline.summary_markdown(steps, metrics, "run")
    assert text.startswith("# run\n")
    assert "| dvc repro | ran convert, validate | 3.5 |" in text and "| promote | skipped |  |" in text
    assert "| quarantined | 1 |" in text and "| map50 | 0.12346 |" in text and "| novel | 0 |" in text
    assert "sources" not in text
    assert "no metrics/*.json" in pipeline.summary_markdown(steps, {})


def test_read_metrics_names_a_broken_file(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "a.json").write_text('{"x": 1}')
    (tmp_path / "metrics" / "b.json").write_text("{not json")
    found = pipeline.read_metrics(tmp_path)
    assert found["a.json"] == {"x": 1} and found["b.json"]["error"].startswith("not valid JSON")


DECISION = {
    "model": "medrov",
    "version": "3",
    "run_id": "abc123",
    "decision": "refused",
    "promoted": False,
    "reason": "gain 0.001 below promote.min_gain 0.005",
    "gain": 0.001,
    "challenger": {"split": "val", "metric": "map50", "all": 0.1234, "base": 0.2, "novel": 0.0, "modality": {}},
    "champion": {"split": "val", "metric": "map50", "all": 0.1224, "base": 0.2, "novel": 0.0, "modality": {}},
    "previous_champion_version": "2",
}


def test_summary_marks_stale_metrics_and_links_the_decision(tmp_path):
    """One decision feeds the model section (no second, contradicting source); files this run did not write are
    marked as from an earlier run; the registry version links into the MLflow UI of tracking.ui."""
    import shutil

    from tests.conftest import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    steps = [{"step": "dvc repro", "result": "ran evaluate", "seconds": 3.5}]
    metrics = {"eval.json": {"map50": 0.1, "base": 0.2, "novel": 0.0}, "train.json": {"epochs": 3, "val_map50": 0.01}}
    text = pipeline.summary_markdown(steps, metrics, "run", fresh={"eval.json"}, decision=DECISION, root=tmp_path)
    assert "**eval.json** (this run)" in text
    assert "**train.json** (from an earlier run: its stage did not run now)" in text
    assert "| registry version | [medrov v3](http://127.0.0.1:5000/#/models/medrov/versions/3) |" in text
    assert "| decision | refused: gain 0.001 below promote.min_gain 0.005 |" in text
    assert "| val map50 base+novel | 0.1234 (champion v2: 0.1224) |" in text
    assert text.count("refused") == 1 and "first" not in text
    stale = pipeline.summary_markdown(
        steps, metrics, "run", fresh=set(), decision={**DECISION, "_fresh": False}, root=tmp_path
    )
    assert "## Model (decision of an earlier run (the promote stage did not run now))" in stale


def test_stage_lines_carry_each_stages_figures(tmp_path):
    import shutil

    from tests.conftest import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "data" / "omnis").mkdir(parents=True)
    (tmp_path / "reports" / "validate").mkdir(parents=True)
    (tmp_path / "data" / "omnis" / "convert_summary.json").write_text(
        '{"converted": 18, "total": 19, "quarantined": 1, "reused": 0, "images": 95, "boxes": 185}'
    )
    (tmp_path / "reports" / "validate" / "validation.json").write_text(
        '{"success": true, "passed": 37, "expectations": 38, "failed": 0, "warnings": 1}'
    )
    (tmp_path / "metrics" / "eval.json").write_text(
        '{"map50": 0.0077, "map50_95": 0.0027, "base": 0.0115, "novel": 0.0}'
    )
    (tmp_path / "reports" / "promote.json").write_text(json.dumps(DECISION))
    assert (
        pipeline.stage_line("convert", tmp_path)
        == "convert: 18 of 19 inputs converted, 1 quarantined, 0 reused -> 95 images, 185 boxes"
    )
    assert pipeline.stage_line("validate", tmp_path) == "validate: passed, 37 of 38 expectations, 0 failed, 1 warnings"
    assert (
        pipeline.stage_line("evaluate", tmp_path)
        == "evaluate: test mAP50 0.0077 (base 0.0115, novel 0), mAP50-95 0.0027"
    )
    assert (
        pipeline.stage_line("promote", tmp_path)
        == "promote: medrov v3 refused: gain 0.001 below promote.min_gain 0.005"
    )
    assert pipeline.stage_line("report", tmp_path) == "report: done"
