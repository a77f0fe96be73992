"""A real DVC repo: `dvc repro` runs demo_sources -> convert -> validate/report -> train -> evaluate -> promote (the
model ends up `champion` in the embedded MLflow store), a second repro is a no-op, `dvc metrics show/diff` and
`dvc plots show` read what the stages declare, `dvc exp run -S` on a train param re-runs train, evaluate and promote
only, and a param re-runs only the stages that read it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import copy_project
from tests.integration.conftest import run_ok as _run

pytestmark = pytest.mark.integration


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the project as a fresh git + DVC repo, with the demo shrunk and no shared data."""
    dest = tmp_path / "proj"
    return dest, copy_project(dest, tmp_path / "no-shared-data")


def test_repro_noop_metrics_plots_experiment_and_param_reruns(project):
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    first = _run([*dvc, "repro"], dest, env)
    assert "Running stage 'demo_sources'" in first.stdout and "Running stage 'convert'" in first.stdout
    # the metric files hold headlines; the detail sits beside each stage's outputs
    assert json.loads((dest / "metrics" / "convert.json").read_text())["quarantined"] == 0
    metrics = json.loads((dest / "data" / "omnis" / "convert_summary.json").read_text())
    assert metrics["converted"] == metrics["total"] == 2 + 2 + 2 + 4 + 4 + 4
    assert metrics["quarantined"] == 0
    assert (dest / "data" / "omnis" / "manifest.parquet").is_file()
    assert set(metrics["sources"]) == {
        "SynthAbdomenCT",
        "SynthKidneyCT",
        "SynthAbdomenMRI",
        "SynthChestXray",
        "SynthBloodSmear",
        "SynthPolyp",
    }
    assert "Running stage 'train'" in first.stdout and "Running stage 'evaluate'" in first.stdout
    assert (dest / "runs" / "demo" / "weights" / "best.pt").is_file()
    assert set(json.loads((dest / "metrics" / "train.json").read_text())) == {"epochs", "val_map50"}
    train = json.loads((dest / "runs" / "demo" / "medrov.json").read_text())
    assert train["kind"] == "open-vocabulary" and train["encoder"]["identity"].startswith("minilm:")
    assert set(json.loads((dest / "metrics" / "eval.json").read_text())) == {"map50", "map50_95", "base", "novel"}
    evaluation = json.loads((dest / "reports" / "eval.json").read_text())
    assert {"all", "base", "novel", "modality", "source"} <= set(evaluation)
    assert evaluation["modality"] and set(evaluation["modality"]) <= {"ct", "mri", "xray", "microscopy", "endoscopy"}
    assert (dest / "reports" / "eval" / "pr_curve.png").is_file()
    assert (dest / "reports" / "eval" / "map50_per_modality.png").is_file()
    # promote: the first model of the registry becomes champion, in the embedded store inside the project
    assert "Running stage 'promote'" in first.stdout
    assert json.loads((dest / "metrics" / "promote.json").read_text())["decision"] == "first"
    promoted = json.loads((dest / "reports" / "promote.json").read_text())
    assert promoted["decision"] == "first" and promoted["promoted"] and promoted["challenger"]["split"] == "val"
    assert (dest / "mlflow.db").is_file() and any((dest / "mlartifacts").rglob("best.pt"))
    listing = _run([sys.executable, "-m", "medrov", "models"], dest, env).stdout
    assert f"sqlite:///{dest / 'mlflow.db'}" in listing.splitlines()[0]
    assert any(line.split()[:2] == ["1", "challenger,champion"] for line in listing.splitlines()[2:]), listing

    second = _run([*dvc, "repro"], dest, env)
    assert "Data and pipelines are up to date" in second.stdout
    assert "Running stage" not in second.stdout

    _run([*dvc, "push", "-q"], dest, env)
    assert any((dest / ".dvc-storage").rglob("*")), "the local DVC remote received nothing"

    # the declared metrics and plots: every metrics file, the training curves and the evaluation PNGs
    shown = json.loads(_run([*dvc, "metrics", "show", "--json"], dest, env).stdout)
    files = next(iter(shown.values()))["data"]
    assert {"metrics/convert.json", "metrics/validate.json", "metrics/train.json", "metrics/eval.json"} <= set(files)
    assert files["metrics/train.json"]["data"]["epochs"] == 1
    _run([*dvc, "plots", "show", "-o", str(dest / "plots-html")], dest, env)
    html = (dest / "plots-html" / "index.html").read_text()
    assert "metrics/mAP50(B)" in html and "pr_curve.png" in html and "map50_per_modality.png" in html

    # a param no stage lists re-runs nothing
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["workers"] = 1
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage" not in _run([*dvc, "repro"], dest, env).stdout

    # an experiment on a train param re-runs train and evaluate, nothing upstream; metrics diff sees it
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], dest, env)
    exp = _run([*dvc, "exp", "run", "-S", "train.profiles.demo.epochs=2"], dest, env).stdout
    assert "Running stage 'train'" in exp and "Running stage 'evaluate'" in exp
    assert not any(f"Running stage '{s}'" in exp for s in ("demo_sources", "convert", "validate", "report"))
    assert json.loads((dest / "metrics" / "train.json").read_text())["epochs"] == 2
    diff = json.loads(_run([*dvc, "metrics", "diff", "--json"], dest, env).stdout)
    assert diff["metrics/train.json"]["epochs"] == {"old": 1, "new": 2, "diff": 1}
    # the pseudo-label thresholds are train params too
    assert "pseudo" in yaml.safe_load((dest / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"]

    # an evaluation-only param re-runs evaluate and not train
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["evaluate"]["conf"] = 0.01
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fourth = _run([*dvc, "repro"], dest, env).stdout
    assert "Running stage 'evaluate'" in fourth and "Running stage 'train'" not in fourth
    # a param only convert reads re-runs convert, not its upstream (reproducing up to convert keeps this cheap)
    params["data"]["boxes"] = "slice"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([*dvc, "repro", "convert"], dest, env).stdout
    assert "Running stage 'convert'" in third and "Running stage 'demo_sources'" not in third
    status = _run([*dvc, "status", "--json"], dest, env).stdout
    # every stage that reads the converted data: evaluate and promote measure on it too (issue 14)
    assert set(json.loads(status)) == {"validate", "report", "train", "evaluate", "promote"}, status

    # the shards layout (issue 19): convert re-runs and packs tar shards, validate reads the images materialised
    # from them, and a repro of the unchanged tree is a no-op
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"]["layout"] = "shards"
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fifth = _run([*dvc, "repro", "validate"], dest, env).stdout
    assert "Running stage 'convert'" in fifth and "Running stage 'validate'" in fifth
    omnis = dest / "data" / "omnis"
    assert (omnis / "shards.json").is_file() and not (omnis / "images").exists() and not (omnis / ".state").exists()
    assert json.loads((dest / "metrics" / "validate.json").read_text())["success"] is True
    assert (dest / "data" / "omnis.files" / "images").is_dir()
    sixth = _run([*dvc, "repro", "validate"], dest, env).stdout
    assert "Running stage" not in sixth, sixth
