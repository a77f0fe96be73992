"""`medrov tune` for real: a 4-trial ASHA sweep on a local Ray with 2 CPUs, each trial a short training on tiny
data, every trial an MLflow child run of one parent run, and the best config written as a params fragment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medrov.config import load_params, with_overrides
from medrov.errors import ConfigError
from medrov.tracking import settings_in_force
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_sweep_logs_child_runs_and_writes_the_best_config(train_overrides, tmp_path):
    import mlflow
    import ray

    from medrov import tune

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = load_params(
        ROOT / "params.yaml",
        [
            *train_overrides,
            "tune.epochs=2",
            "tune.num_samples=4",
            "tune.num_cpus=2",
            "tune.resources.cpu=1",
            f"tune.storage={tmp_path / 'ray'}",
            "tracking.experiment=tune-test",
            "train.profiles.demo.extra={plots: false}",
        ],
    )
    best_file = tmp_path / "tune_best.yaml"
    summary = tune.run(params, tracking_uri=uri, best_file=best_file)
    assert not ray.is_initialized(), "tune must shut down the local Ray it started"

    assert len(summary["trials"]) == 4 and summary["completed"] == 4
    assert all(t["error"] is None and 1 <= t["epochs"] <= 2 for t in summary["trials"])
    for t in summary["trials"]:
        for key, dist in params.tune.space.items():  # within the params' ranges
            assert dist["uniform"][0] <= t["config"][key] <= dist["uniform"][1], (key, t["config"])
        assert t["weights"].endswith("best.pt") and Path(t["weights"]).is_file()  # what the sweep bench scores
    assert len({t["config"]["pseudo.iou_t"] for t in summary["trials"]}) == 4, "the trials must sample different T"

    # the best config: a params.yaml fragment that validates, equal to the best trial's values, and the dvc flags
    fragment = yaml.safe_load(best_file.read_text())
    best = summary["best"]
    assert fragment == {"pseudo": {"iou_t": best["pseudo.iou_t"], "conf_c": best["pseudo.conf_c"]}}
    assert best in [t["config"] for t in summary["trials"]]
    assert summary["best_score"] >= max(t["objective"] for t in summary["trials"])
    applied = with_overrides(params, [f"pseudo.iou_t={best['pseudo.iou_t']}", f"pseudo.conf_c={best['pseudo.conf_c']}"])
    assert applied.pseudo.iou_t == best["pseudo.iou_t"]
    for key in ("pseudo.iou_t", "pseudo.conf_c"):
        assert f"-S '{key}={best[key]}'" in summary["dvc_exp_run"] and summary["dvc_exp_run"] in best_file.read_text()

    # MLflow: one parent run, 4 finished child runs nested under it, each with its params and per-epoch metric
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tune-test")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name == "tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_parent_run_id"]]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.params["best.pseudo.iou_t"] == str(best["pseudo.iou_t"])
    assert len(children) == 4 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.run_id for r in children} == {t["mlflow_run_id"] for t in summary["trials"]}
    for run in children:
        trial = next(t for t in summary["trials"] if t["mlflow_run_id"] == run.info.run_id)
        # a trial is a tracked training: the trial's own values, the provenance tags
        # the settings a trial's training reads (its profile), not the whole params file
        assert set(settings_in_force(params, "train", params.tune.profile)) <= set(run.data.params)
        assert {k: float(run.data.params[k]) for k in trial["config"]} == trial["config"]
        assert run.data.tags["medrov.step"] == "train" and run.data.tags["medrov.git_commit"]
        assert (
            "medrov.data.presence_md5" in run.data.tags
            and run.data.tags["medrov.tune_parent_run_id"] == parent[0].info.run_id
        )
        history = client.get_metric_history(run.info.run_id, "metrics/mAP50B")
        assert [m.step for m in history] == list(
            range(1, len(history) + 1)
        ) and history  # epochs from 1, as ultralytics counts


def test_space_key_that_is_not_a_param_fails_before_ray_starts(train_overrides, tmp_path):
    import ray

    from medrov import tune

    params = load_params(ROOT / "params.yaml", [*train_overrides, "tune.space={pseudo.iou: {uniform: [0.2, 0.4]}}"])
    with pytest.raises(ConfigError, match=r"tune.space.pseudo.iou: .*Extra inputs are not permitted"):
        tune.run(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(ROOT / "params.yaml", [*train_overrides, "tune.space={pseudo.conf_c: {uniform: [0.7, 1.5]}}"])
    with pytest.raises(ConfigError, match=r"tune.space.pseudo.conf_c: uniform \[0.7, 1.5\]"):
        tune.run(params, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match="space.pseudo.iou_t: loguniform needs low < high"):
        load_params(ROOT / "params.yaml", ["tune.space={pseudo.iou_t: {loguniform: [0.4, 0.2]}}"])


def test_cli_names_a_bad_search_space_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "MEDROV_ROOT": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medrov",
            "tune",
            "-S",
            "tune.space={train.profiles.demo.lr: {loguniform: [0.0001, 0.01]}}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert (
        "error: ConfigError: tune.space.train.profiles.demo.lr: loguniform [0.0001, 0.01] is not valid for params"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
