"""Finding 6: the registry under concurrent promotes, and SIGTERM/SIGINT ending a step's MLflow run as KILLED."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration  # several processes on one real SQLite store


def _overrides(store: Path, model: str) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
        f"train.project={store / 'runs'}",
        f"promote.model_name={model}",
    ]


def _params(store: Path, model: str = "medrov"):
    from medrov.config import load_params

    return load_params(ROOT / "params.yaml", _overrides(store, model))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One SQLite store for the module (its schema migrations cost seconds); each test uses its own model name."""
    from medrov import tracking

    root = tmp_path_factory.mktemp("registry")
    tracking.connect(_params(root).tracking)
    return root


def _train_run(params, tmp_path: Path, name: str, map50: float) -> str:
    """A train run with a logged (dummy) model artifact and a finished val evaluation of ``map50``."""
    from medrov import tracking

    client = tracking.connect(params.tracking)
    with tracking.step_run(params, "train", run_name=name) as run:
        run_id = run.info.run_id
        (tmp_path / "MLmodel").write_text("flavors: {}\n")
        client.log_artifact(run_id, str(tmp_path / "MLmodel"), "model")
        client.set_tag(run_id, "medrov.model_uri", f"runs:/{run_id}/model")
    scores = {"map50": map50, "map50_95": map50 / 2, "classes": 1}
    tracking.record_evaluation(params, run_id, {"all": scores, "modality": {"ct": {"all": scores}}, "images": 4}, "val")
    return run_id


def _promote_at_once(store: Path, model: str, run_ids: list[str]) -> list[dict]:
    """``tracking.promote`` of each run id, each in its own process, released together."""
    go = store / f"go-{model}"
    script = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from medrov import tracking
        from medrov.config import load_params
        params = load_params({str(ROOT / "params.yaml")!r}, {_overrides(store, model)!r})
        tracking.connect(params.tracking)
        print("ready", flush=True)
        while not Path({str(go)!r}).exists():
            time.sleep(0.01)
        print(json.dumps(tracking.promote(params, sys.argv[1])), flush=True)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, rid], stdout=subprocess.PIPE, text=True) for rid in run_ids
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        go.touch()
        outs = [proc.communicate(timeout=300)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert all(proc.returncode == 0 for proc in procs)
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def test_concurrent_promotes_of_one_run_register_it_once(store, tmp_path):
    from medrov import tracking

    params = _params(store, "one")
    run_id = _train_run(params, tmp_path, "only", 0.5)
    results = _promote_at_once(store, "one", [run_id] * 3)
    client = tracking.connect(params.tracking)
    versions = client.search_model_versions(f"name = 'one' and run_id = '{run_id}'")
    assert len(versions) == 1, [v.version for v in versions]
    assert sorted(r["decision"] for r in results) == ["already champion", "already champion", "first"]
    assert {r["version"] for r in results} == {str(versions[0].version)}
    assert sum(r["promoted"] for r in results) == 1


def test_concurrent_promotes_of_two_runs_are_compared(store, tmp_path):
    from medrov import tracking

    params = _params(store, "two")
    strong = _train_run(params, tmp_path, "strong", 0.6)
    weak = _train_run(params, tmp_path, "weak", 0.3)
    results = {r["run_id"]: r for r in _promote_at_once(store, "two", [weak, strong])}
    client = tracking.connect(params.tracking)
    champion = client.get_model_version_by_alias("two", "champion")
    assert champion.run_id == strong  # whichever went first, the weak one never ends up champion
    assert sum(r["decision"] == "first" for r in results.values()) == 1
    # every printed decision is the one that took effect
    for run_id, result in results.items():
        assert result["promoted"] == (run_id == strong or result["decision"] == "first")
    if results[weak]["promoted"]:
        assert results[strong]["decision"] == "promoted"
    else:
        assert results[weak]["decision"] == "refused"


def test_sigterm_and_sigint_end_the_run_killed(store):
    from medrov import tracking

    params = _params(store)
    script = textwrap.dedent(f"""
        import time
        from medrov import tracking
        from medrov.config import load_params
        params = load_params({str(ROOT / "params.yaml")!r}, {_overrides(store, "medrov")!r})
        with tracking.step_run(params, "train", run_name="long") as run:
            print(run.info.run_id, flush=True)
            time.sleep(300)
    """)
    procs = {
        sig: subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    run_ids = {}
    try:
        for sig, proc in procs.items():
            run_ids[sig] = proc.stdout.readline().strip()
            assert run_ids[sig], proc.stderr.read()
            os.kill(proc.pid, sig)
        for proc in procs.values():
            proc.communicate(timeout=120)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    client = tracking.connect(params.tracking)
    assert {sig.name: client.get_run(rid).info.status for sig, rid in run_ids.items()} == {
        "SIGTERM": "KILLED",
        "SIGINT": "KILLED",
    }
