"""Prefect for real: a `prefect server start` on 127.0.0.1 receives the deployments of prefect.yaml with their
schedules, a process worker runs a triggered pipeline run to Completed with its summary artifact; a failing step
fails the flow run with the step's own error; the per-source conversion flow maps one task per source."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import copy_project, run_ok

pytestmark = pytest.mark.integration

PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on a free loopback port, its own PREFECT_HOME (SQLite), scheduler every 2 s."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "medrov",
        "DO_NOT_TRACK": "1",
    }
    log = (home / "server.log").open("w")
    proc = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui", "--analytics-off"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"prefect server did not become healthy:\n{(home / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield {"url": url, "env": env, "home": home}
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def settings(server):
    """This test process talks to the test server too (in-process flow runs, the client)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    with temporary_settings({PREFECT_API_URL: server["url"], PREFECT_HOME: str(server["home"])}):
        yield server
        # send this process's queued run logs and events while the server is still up
        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)


def _client_call(func):
    from prefect.client.orchestration import get_client

    async def main():
        async with get_client() as client:
            return await func(client)

    return asyncio.run(main())


def _wait_final(flow_run_id, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        run = _client_call(lambda c: c.read_flow_run(flow_run_id))
        if run.state and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run still {run.state.type if run.state else None} after {timeout} s"
        time.sleep(2)


def _artifacts(flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return _client_call(
        lambda c: c.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    )


def test_deployments_are_scheduled_and_a_worker_completes_a_triggered_pipeline_run(settings, tmp_path):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    project = tmp_path / "proj"
    env = {**copy_project(project, tmp_path / "no-shared-data"), **settings["env"]}
    # one machine, a bare server: `python -m flows.pools` makes the pools prefect.yaml names, then deploy --all works
    made = run_ok([sys.executable, "-m", "flows.pools"], project, env, timeout=120).stdout
    assert "work pool medrov: created (process)" in made and "work pool medrov-gpu: created (process)" in made, made
    assert "deployments train-paper; its runs wait for a worker on a GPU machine" in made, made
    again = run_ok([sys.executable, "-m", "flows.pools"], project, env, timeout=120).stdout
    assert "work pool medrov: exists" in again and "created" not in again, again
    deployed = run_ok([*PREFECT, "--no-prompt", "deploy", "--all"], project, env, timeout=300)
    assert deployed.returncode == 0

    deployments = {d.name: d for d in _client_call(lambda c: c.read_deployments())}
    assert set(deployments) == {"nightly", "weekly-sweep", "convert", "train-paper"}
    assert [s.schedule.cron for s in deployments["nightly"].schedules] == ["0 2 * * *"]
    assert [s.schedule.cron for s in deployments["weekly-sweep"].schedules] == ["0 3 * * 0"]
    assert deployments["train-paper"].parameters == {"profile": "paper", "devices": "0,1,2,3"}
    assert deployments["train-paper"].work_pool_name == "medrov-gpu"
    # the scheduler turns the cron schedules into scheduled runs (what the UI lists as upcoming)
    deadline = time.monotonic() + 60
    for name in ("nightly", "weekly-sweep"):
        while True:
            scheduled = _client_call(
                lambda c: c.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployments[name].id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                    ),
                )
            )
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert scheduled, f"no scheduled run of {name} after 60 s"
        assert all(r.expected_start_time > r.created for r in scheduled)

    worker_log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", "medrov", "--limit", "1"],
        cwd=project,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        run = _client_call(
            lambda c: c.create_flow_run_from_deployment(deployments["nightly"].id, parameters={"targets": ["validate"]})
        )
        final = _wait_final(run.id, timeout=420)
    finally:
        _stop(worker)
        worker_log.close()
    assert final.state.type == StateType.COMPLETED, (
        f"{final.state.type}: {final.state.message}\n{(tmp_path / 'worker.log').read_text()[-3000:]}"
    )

    tasks = _client_call(lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]})))
    # promote needs a trained model (the DVC stage `promote` covers it): these stages end at validate
    assert {t.name for t in tasks} == {"dvc-pull", "dvc-repro", "dvc-push"}
    assert {t.state.type for t in tasks} == {StateType.COMPLETED}
    # it ran in the project copy: the cheap stages up to validate, pushed to the local remote
    convert = json.loads((project / "metrics" / "convert.json").read_text())
    assert json.loads((project / "metrics" / "validate.json").read_text())["success"] is True
    assert not (project / "metrics" / "train.json").exists(), "train is not upstream of validate: it must not run"
    assert any((project / ".dvc-storage").rglob("*")), "dvc push sent nothing to the local remote"

    artifacts = {a.key: a for a in _artifacts(run.id)}
    summary = artifacts["pipeline-summary"]
    assert summary.type == "markdown"
    assert "| dvc repro | ran demo_sources, convert, validate |" in summary.data
    assert f"| images | {convert['images']} |" in summary.data and "| success | True |" in summary.data
    assert "**convert.json** (this run)" in summary.data and "**validate.json** (this run)" in summary.data

    # the run log carries one line of figures per stage that ran
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = [
        entry.message
        for entry in _client_call(
            lambda c: c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        )
    ]
    detail = json.loads((project / "data" / "omnis" / "convert_summary.json").read_text())
    assert f"convert: {detail['converted']} of {detail['total']} inputs converted, 0 quarantined" in "\n".join(logs), (
        logs
    )
    assert any(m.startswith("validate: passed, ") for m in logs), logs


def test_a_failing_step_fails_the_flow_run_with_the_steps_error(settings, tmp_path, monkeypatch):
    import yaml
    from prefect.client.schemas.objects import StateType

    from flows.pipeline import pipeline

    project = tmp_path / "proj"
    copy_project(project, tmp_path / "no-shared-data")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["demo"]["ct_volumes"] = 0  # out of range: `medrov demo-sources` exits with a ConfigError
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(project)
    monkeypatch.delenv("MEDROV_ROOT", raising=False)

    state = pipeline(targets=["convert"], pull=False, push=False, return_state=True)
    assert state.is_failed()
    stored = _client_call(lambda c: c.read_flow_run(state.state_details.flow_run_id))
    assert stored.state.type == StateType.FAILED
    message = stored.state.message
    assert (
        "dvc repro convert failed" in message
        and "demo.ct_volumes" in message
        and "greater than or equal to 1" in message
    ), message
    assert not (project / "data" / "omnis").exists()


def test_convert_flow_maps_one_task_per_source_and_reports_quarantine(settings, tmp_path, monkeypatch):
    from prefect.client.schemas.filters import FlowRunFilter

    from flows.convert import convert_sources
    from medrov.config import load_params
    from medrov.data import demo

    project = tmp_path / "proj"
    copy_project(project, tmp_path / "no-shared-data")
    monkeypatch.chdir(project)
    monkeypatch.delenv("MEDROV_ROOT", raising=False)
    monkeypatch.setenv("MEDROV_SHARED_DATA", str(tmp_path / "no-shared-data"))
    demo.generate(load_params(project / "params.yaml").demo, project / "data" / "raw" / "synthetic")
    broken = sorted((project / "data" / "raw" / "synthetic" / "SynthPolyp" / "images").glob("*.png"))[0]
    broken.write_bytes(b"not a png")

    state = convert_sources(overrides=["data.workers=1"], return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["per_source"]["SynthPolyp"] == 1 and summary["quarantined"] == 1
    assert summary["reused"] == summary["converted"] and summary["reconverted"] == 0, (
        "assemble must reuse the per-source work"
    )
    run_id = state.state_details.flow_run_id
    tasks = _client_call(lambda c: c.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]})))
    names = sorted(t.name for t in tasks)
    assert names == sorted([f"convert-{s}" for s in summary["sources"]] + ["convert-assemble"])
    table = {a.key: a for a in _artifacts(run_id)}["convert-quarantine"]
    rows = {row["source"]: row for row in json.loads(table.data)}
    assert rows["SynthPolyp"]["quarantined"] == 1 and rows["SynthAbdomenCT"]["quarantined"] == 0
    assert (project / "data" / "omnis" / "manifest.parquet").is_file()


def test_sweep_flow_fails_with_the_config_error_of_a_bad_space(settings):
    from flows.sweep import sweep

    state = sweep(overrides=["tune.space={pseudo.nope: {uniform: [0.1, 0.2]}}"], return_state=True)
    assert state.is_failed()
    assert "tune.space.pseudo.nope" in state.message and "Extra inputs are not permitted" in state.message


def test_train_flow_hands_its_device_list_to_the_trainer(settings, train_overrides):
    from flows.train import train_flow

    store = f"sqlite:///{Path(train_overrides[1].split('=', 1)[1]).parent / 'mlflow.db'}"
    state = train_flow(
        profile="demo", devices="cpu", overrides=[*train_overrides, f"tracking.uri={store}"], return_state=True
    )
    assert state.is_completed(), state.message
    info = state.result()
    assert info["args"]["device"] == "cpu" and info["profile"] == "demo" and info["epochs_done"] == 1
    assert Path(info["weights"]).is_file()
    # tracked like `medrov train`: the run, its logged model and the promote-split evaluation are in the store
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    run = client.get_run(info["mlflow"]["run_id"])
    assert run.data.tags["medrov.model_uri"] == info["mlflow"]["model_uri"] and run.info.status == "FINISHED"
    assert client.get_run(info["mlflow"]["gate_eval_run_id"]).data.tags["mlflow.parentRunId"] == run.info.run_id
    summary = {a.key: a for a in _artifacts(state.state_details.flow_run_id)}["train-summary"]
    assert (
        info["mlflow"]["run_id"] in summary.data
        and "metrics/mAP50(B)" in summary.data
        and "| device | cpu |" in summary.data
    )


@pytest.mark.gpu
@pytest.mark.skipif(
    not __import__("torch").cuda.is_available() or __import__("torch").cuda.device_count() < 2,
    reason="needs 2 CUDA devices for ultralytics DDP",
)
def test_train_flow_runs_ddp_on_two_gpus(settings, train_overrides):
    from flows.train import train_flow

    info = train_flow(profile="demo", devices="0,1", overrides=[*train_overrides, "train.profiles.demo.batch=16"])
    assert info["args"]["device"] == "0,1" and Path(info["weights"]).is_file()
