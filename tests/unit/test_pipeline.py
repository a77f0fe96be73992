"""medrov.pipeline: the error lines a failed step is reported with, the run summary, a failing command."""

from __future__ import annotations

import sys

import pytest

from medrov import pipeline
from medrov.errors import StepFailed


def test_error_lines_keep_what_says_why():
    output = "\n".join([
        "Running stage 'convert':",
        "> medrov convert --no-progress",
        "12:00:01 INFO medrov.convert: SynthPolyp: 4 input(s) found",
        "error: ConfigError: params.yaml: data.boxes: Input should be 'components' or 'slice'",
        "ERROR: failed to reproduce 'convert': failed to run: medrov convert, exited with 2",
    ])
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
    steps = [{"step": "dvc repro", "result": "ran convert, validate", "seconds": 3.5}, {"step": "promote", "result": "skipped"}]
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
