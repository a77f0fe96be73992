"""Training as a Prefect flow, for the runs that need a GPU machine: the ``paper`` profile (4 GPUs, batch 128,
20 epochs, L scale) by default, its device list handed to ultralytics, which launches DDP itself."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact


@task(task_run_name="train-{profile}")
def train_task(
    profile: str, devices: str | None, params_file: str | None, overrides: list[str], resume: bool
) -> dict[str, Any]:
    from medrov import steps
    from medrov.config import load_params

    extra = [f"train.profiles.{profile}.device={devices}"] if devices else []
    # the same tracked training as `medrov train`: an MLflow run with the logged model, ready for `medrov promote`
    return steps.train(load_params(params_file, [*overrides, *extra]), profile=profile, resume=resume)


@flow(name="train", log_prints=True)
def train_flow(
    profile: str = "paper",
    devices: str | None = None,
    params_file: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train ``profile``; ``devices`` (e.g. ``"0,1,2,3"``) overrides its device list (several GPUs: DDP).

    Args:
        profile: training profile of params.yaml (``paper``: 4 GPUs, batch 128, 20 epochs, yolov8l-worldv2).
        devices: CUDA device ids, comma separated; default the profile's ``device``.
        params_file: params file (default: the project's params.yaml).
        overrides: dotted params overrides.
        resume: continue the profile's interrupted run.
    """
    from medrov.env import apply_offline_env

    apply_offline_env()
    info = train_task(profile, devices, params_file, list(overrides or []), resume)
    create_markdown_artifact(
        key="train-summary",
        markdown=summary_markdown(info),
        description="what was trained, where the weights are, validation metrics, MLflow run",
    )
    return info


def summary_markdown(info: dict[str, Any]) -> str:
    """The training's run summary as Markdown: settings, result, validation metrics of best.pt, MLflow run."""
    args, tracked = info.get("args", {}), info.get("mlflow") or {}
    rows = [
        ("profile", info.get("profile")),
        ("kind", info.get("kind")),
        ("device", args.get("device")),
        ("model", args.get("model")),
        ("epochs", f"{info.get('epochs_done')} of {args.get('epochs')}"),
        ("batch / imgsz", f"{args.get('batch')} / {args.get('imgsz')}"),
        ("seconds", info.get("seconds")),
        ("weights", info.get("weights")),
        ("text encoder", (info.get("encoder") or {}).get("identity", "none (closed set)")),
        ("MLflow run", tracked.get("run_id", "not tracked")),
        ("model URI", tracked.get("model_uri", "-")),
    ]
    lines = [
        "# medrov training",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        "## Validation (best.pt)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted((info.get("val") or {}).items())] or ["| none | - |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    train_flow()
