"""The threshold sweep as a Prefect flow: Ray Tune runs inside ONE task (per-task Ray resources through Prefect's
Ray runner crash over a Ray client address, see FACTS.md); the best config becomes a Markdown artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact


@task(task_run_name="tune")
def tune_task(
    params_file: str | None,
    overrides: list[str],
    address: str | None,
    num_samples: int | None,
    tracking_uri: str | None,
) -> dict[str, Any]:
    from medrov import tune
    from medrov.config import load_params

    return tune.run(
        load_params(params_file, overrides), address=address, num_samples=num_samples, tracking_uri=tracking_uri
    )


@flow(name="sweep", log_prints=True)
def sweep(
    num_samples: int | None = None,
    address: str | None = None,
    params_file: str | None = None,
    overrides: list[str] | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Ray Tune over ``tune.space`` (default: pseudo-label thresholds T and C), ASHA on validation mAP50.

    Args:
        num_samples: trials (default ``tune.num_samples``).
        address: Ray cluster address (default ``tune.ray_address``; none: a local Ray on the worker's machine).
        params_file: params file (default: the project's params.yaml).
        overrides: dotted params overrides, e.g. ``["tune.epochs=5"]``.
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``).
    """
    from medrov.env import apply_offline_env

    apply_offline_env()
    summary = tune_task(params_file, list(overrides or []), address, num_samples, tracking_uri)
    rows = "\n".join(
        f"| `{t['trial'][:32]}` | {t['objective'] if t['objective'] is not None else 'failed'} | {t['epochs']} | "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["config"].items())
        + " |"
        for t in summary["trials"]
    )
    create_markdown_artifact(
        key="sweep-best",
        markdown=(
            f"# Threshold sweep\n\nbest {summary['metric']} = **{summary['best_score']:.5f}** with "
            f"`{summary['best']}`\n\nwritten to `{summary['best_file']}`; apply with `{summary['dvc_exp_run']}`\n\n"
            f"| trial | objective | epochs | config |\n|---|---|---|---|\n{rows}\n"
        ),
        description="best config of the Ray Tune sweep",
    )
    return summary


if __name__ == "__main__":
    sweep()
