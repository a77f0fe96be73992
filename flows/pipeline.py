"""The full pipeline as a Prefect flow: ``dvc pull`` (when a remote is set), ``dvc repro``, ``dvc push``, and a
Markdown artifact with the run summary and the metrics of ``metrics/*.json``.

The steps themselves are the DVC stages (the ``medrov`` CLI); this flow only sequences and reports them. Promotion
is the ``promote`` stage of ``dvc.yaml``, so it runs once, inside ``dvc repro``, when its inputs changed.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger


@task(task_run_name="dvc-pull")
def dvc_pull() -> dict[str, Any]:
    from medrov import pipeline

    remote = pipeline.default_remote()
    if not remote:
        get_run_logger().info("dvc pull: skipped, no default DVC remote is configured")
        return {"step": "dvc pull", "result": "skipped: no remote"}
    started = time.perf_counter()
    # a fresh remote has nothing to pull yet; missing objects are rebuilt by repro, so partial pulls are fine
    output = pipeline.dvc(["pull", "--allow-missing"])
    get_run_logger().info("dvc pull from %s: %s", remote, output.strip().splitlines()[-1] if output.strip() else "done")
    return {"step": "dvc pull", "result": f"from {remote}", "seconds": round(time.perf_counter() - started, 1)}


@task(task_run_name="dvc-repro")
def dvc_repro(targets: list[str] | None, force: bool) -> dict[str, Any]:
    from medrov import pipeline

    outcome = pipeline.repro(targets=targets, force=force)
    ran = ", ".join(outcome["stages_run"]) or "nothing (up to date)"
    logger = get_run_logger()
    logger.info("dvc repro %s: ran %s in %.1f s", " ".join(targets or []), ran, outcome["seconds"])
    for stage in outcome["stages_run"]:  # what each stage did, in figures, from what it wrote
        logger.info("%s", pipeline.stage_line(stage))
    return {
        "step": "dvc repro",
        "result": f"ran {ran}",
        "seconds": outcome["seconds"],
        "stages_run": outcome["stages_run"],
    }


@task(task_run_name="dvc-push")
def dvc_push() -> dict[str, Any]:
    from medrov import pipeline

    remote = pipeline.default_remote()
    if not remote:
        get_run_logger().info("dvc push: skipped, no default DVC remote is configured")
        return {"step": "dvc push", "result": "skipped: no remote"}
    started = time.perf_counter()
    pipeline.dvc(["push"])
    return {"step": "dvc push", "result": f"to {remote}", "seconds": round(time.perf_counter() - started, 1)}


@flow(name="pipeline", log_prints=True)
def pipeline(
    targets: list[str] | None = None, pull: bool = True, push: bool = True, force: bool = False
) -> dict[str, Any]:
    """Pull, reproduce (promotion included: the ``promote`` stage), push; the run summary and metrics become the
    ``pipeline-summary`` artifact.

    Args:
        targets: DVC stages to reproduce (with what they depend on); default the whole pipeline.
        pull: ``dvc pull`` first when a default remote is configured.
        push: ``dvc push`` the results when a default remote is configured.
        force: re-run the stages even when they are up to date.
    """
    from medrov import paths
    from medrov import pipeline as steps
    from medrov.env import apply_offline_env

    apply_offline_env()
    root = paths.project_root()
    started = time.time()
    get_run_logger().info("pipeline in %s: targets %s", root, targets or "all stages")
    done = []
    if pull:
        done.append(dvc_pull())
    repro = dvc_repro(targets, force)
    done.append(repro)
    if push:
        done.append(dvc_push())
    # the one promote decision of the summary: the promote stage's own, marked stale when that stage did not run now
    decision = _read_json(root / "reports" / "promote.json")
    if decision is not None:
        decision["_fresh"] = "promote" in repro["stages_run"]
    metrics = steps.read_metrics(root)
    markdown = steps.summary_markdown(
        done,
        metrics,
        f"medrov pipeline run in {root}",
        fresh=steps.fresh_metrics(root, started),
        decision=decision,
        root=root,
    )
    create_markdown_artifact(
        key="pipeline-summary",
        markdown=markdown,
        description="steps run, the model decision with MLflow links, headline metrics (stale ones marked)",
    )
    return {"steps": done, "metrics": metrics}


def _read_json(path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    pipeline()
