"""Training as a Prefect flow, for the runs that need a GPU machine: the ``paper`` profile (4 GPUs, batch 128,
20 epochs, L scale) by default, its device list handed to ultralytics, which launches DDP itself."""

from __future__ import annotations

from typing import Any

from prefect import flow, task


@task(task_run_name="train-{profile}")
def train_task(profile: str, devices: str | None, params_file: str | None, overrides: list[str], resume: bool) -> dict[str, Any]:
    from medrov import tracking
    from medrov.config import load_params

    extra = [f"train.profiles.{profile}.device={devices}"] if devices else []
    # the same tracked training as `medrov train`: an MLflow run with the logged model, ready for `medrov promote`
    return tracking.train(load_params(params_file, [*overrides, *extra]), profile=profile, resume=resume)


@flow(name="train", log_prints=True)
def train_flow(profile: str = "paper", devices: str | None = None, params_file: str | None = None,
               overrides: list[str] | None = None, resume: bool = False) -> dict[str, Any]:
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
    return train_task(profile, devices, params_file, list(overrides or []), resume)


if __name__ == "__main__":
    train_flow()
