"""The ``tune`` step: a Ray Tune sweep over params keys (default: the pseudo-label thresholds T and C).

Each trial is :func:`medrov.steps.tune_trial`: a short tracked training through the train step (the code of
``medrov train``) with the trial's values applied as dotted overrides, in its own run folder. The validation
metric is reported every epoch, so ASHA stops weak trials early. Every trial is a train run (flattened params,
git/DVC provenance) nested under one ``tune`` parent run (``mlflow.parentRunId``: Ray's MLflow logger cannot
nest, see FACTS.md). The best config is written as a
params.yaml fragment and returned with the ``dvc exp run -S`` flags that apply it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from medrov import paths
from medrov.config import Params, TuneParams, with_overrides
from medrov.errors import ConfigError, TuneFailed
from medrov.steps.tuning import override, tune_trial

log = logging.getLogger(__name__)


def search_space(space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """Ray Tune distributions from the ``tune.space`` section (keys stay dotted params keys)."""
    from ray import tune

    makers = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    out = {}
    for key, dist in space.items():
        kind, values = next(iter(dist.items()))
        out[key] = tune.choice(list(values)) if kind == "choice" else makers[kind](*values)
    return out


def check_space(params: Params, space: dict[str, dict[str, list[Any]]]) -> None:
    """Every key must be a params key and every end of its range a valid value, before any trial starts.

    Raises:
        ConfigError: naming the key and the reason (unknown key, value out of range).
    """
    for key, dist in space.items():
        kind, values = next(iter(dist.items()))
        ends = values if kind == "choice" else [values[0], values[1] - 1 if kind == "randint" else values[1]]
        for value in ends:
            try:
                with_overrides(params, [override(key, value)])
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: {kind} {values} is not valid for params ({exc})") from exc


def _init_ray(cfg: TuneParams, address: str | None) -> bool:
    """Connect to a cluster, or start a local Ray; returns whether this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if address and address != "local":  # "auto": the cluster RAY_ADDRESS names (infra/README.md)
        log.info("tune: connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        from medrov.env import init_local_ray

        extra = {} if cfg.num_gpus is None else {"num_gpus": cfg.num_gpus}
        init_local_ray(cfg.num_cpus or os.cpu_count() or 1, log_to_driver=True, **extra)
    log.info("tune: Ray resources %s", ray.cluster_resources())
    return True


def best_fragment(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> the nested params.yaml fragment they mean."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def run(
    params: Params,
    address: str | None = None,
    num_samples: int | None = None,
    tracking_uri: str | None = None,
    best_file: str | Path | None = None,
) -> dict[str, Any]:
    """Run the sweep (see :func:`_run`); an explicit ``tracking_uri`` wins over ``MLFLOW_TRACKING_URI`` for this
    call only (local Ray trials inherit it)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        return _run(params, address, num_samples, tracking_uri, best_file)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def _run(
    params: Params,
    address: str | None = None,
    num_samples: int | None = None,
    tracking_uri: str | None = None,
    best_file: str | Path | None = None,
) -> dict[str, Any]:
    """Run the sweep of ``params.tune``; returns the best config, its score and one row per trial.

    Args:
        params: the params every trial starts from (overrides already applied).
        address: a Ray cluster address, ``auto`` for the one ``RAY_ADDRESS`` names (default ``tune.ray_address``;
            none or ``local``: a Ray on this machine, kept on 127.0.0.1).
        num_samples: trials to run (default ``tune.num_samples``).
        tracking_uri: MLflow tracking URI (default: the project's, see :func:`medrov.tracking.tracking_uri`).
        best_file: where the best config goes (default ``tune.best``).

    Raises:
        ConfigError: a search-space key or range is not valid for params, or the profile is unknown.
        TuneFailed: no trial reported the metric (every trial failed).
    """
    cfg = params.tune
    profile = cfg.profile or params.train.profile
    if profile not in params.train.profiles:
        raise ConfigError(f"tune.profile {profile!r} is not one of {sorted(params.train.profiles)}")
    if not cfg.space:
        raise ConfigError("tune.space is empty: nothing to sweep")
    check_space(params, cfg.space)  # before Ray and MLflow are even imported: a bad space fails in a second

    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    root = paths.project_root()
    storage = paths.resolve(cfg.storage)
    best_path = paths.resolve(best_file or cfg.best)
    samples = num_samples or cfg.num_samples

    from medrov import tracking as trk

    client = trk.connect(params.tracking)  # the project's store and experiment, as train/evaluate/promote use
    uri = trk.tracking_uri(params.tracking)
    experiment_id = trk.experiment_id(client, params.tracking)
    # the sweep's run carries the provenance of every step run (git, data); its trials are train runs under it
    parent = client.create_run(
        experiment_id, run_name="tune", tags={**trk.run_tags(params, "tune"), "medrov.profile": profile}
    )
    parent_id = parent.info.run_id
    for key, value in {
        "tune.profile": profile,
        "tune.epochs": cfg.epochs,
        "tune.num_samples": samples,
        "tune.resources": json.dumps(cfg.resources.model_dump()),
        "tune.space": json.dumps(cfg.space),
        "tune.metric": cfg.metric,
    }.items():
        client.log_param(parent_id, key, value)

    started = time.perf_counter()
    owns_ray = False
    try:
        owns_ray = _init_ray(cfg, address or cfg.ray_address)
        name = f"tune-{time.strftime('%Y%m%d-%H%M%S')}"
        trainable = tune.with_parameters(
            tune_trial,
            base=params.model_dump(mode="json", by_alias=True),
            root=str(root),
            trials_dir=str(storage / name / "trials"),
            profile=profile,
            epochs=cfg.epochs,
            metric=cfg.metric,
            device="''" if cfg.resources.gpu > 0 else "cpu",
            tracking={"uri": uri, "parent_run_id": parent_id},
        )
        trainable = tune.with_resources(trainable, {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=cfg.epochs,
            grace_period=min(cfg.grace_period, cfg.epochs),
            reduction_factor=cfg.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(cfg.space),
            tune_config=tune.TuneConfig(
                metric="objective",
                mode=cfg.mode,
                scheduler=scheduler,
                num_samples=samples,
                reuse_actors=True,  # a trial process keeps torch/ultralytics imported and the encoder loaded for the next  # noqa: E501
                search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent or 0),
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=1),
        )
        log.info(
            "tune: %d trials of %s (%d epochs max, ASHA grace %d) over %s",
            samples,
            profile,
            cfg.epochs,
            cfg.grace_period,
            ", ".join(cfg.space),
        )
        grid = tuner.fit()
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    finally:
        if owns_ray:
            ray.shutdown()

    trials = []
    for result in grid:
        metrics = result.metrics or {}
        child = metrics.get("mlflow_run_id")
        row = {
            "trial": (result.path and Path(result.path).name) or "",
            "config": result.config,
            "objective": metrics.get("objective"),
            "epochs": metrics.get("epoch", 0),
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}".splitlines()[0],
            "mlflow_run_id": child,
        }
        run_dir = metrics.get("run_dir")  # the trial's training folder, under tune.storage
        best_pt = Path(run_dir) / "weights" / "best.pt" if run_dir else None
        if best_pt is not None and best_pt.is_file():
            row["weights"] = str(best_pt)
        trials.append(row)
        status = client.get_run(child).info.status if child else None
        # a trial Ray stopped (ASHA, or max_t reached) ends with SystemExit raised in its thread, possibly again
        # while the trial corrects its run's status: Ray's verdict (no error) is the one that counts
        if status == "RUNNING" or (status == "FAILED" and result.error is None):
            client.set_tag(child, "tune.stopped_early", "true")
            client.set_terminated(child, "FINISHED")
    scored = [t for t in trials if t["objective"] is not None and not math.isnan(t["objective"])]
    if not scored:
        client.set_terminated(parent_id, "FAILED")
        errors = "; ".join(t["error"] for t in trials if t["error"]) or "no trial reported the metric"
        raise TuneFailed(f"every trial failed: {errors}")
    best = grid.get_best_result(metric="objective", mode=cfg.mode, scope="all")
    best_config = {k: best.config[k] for k in cfg.space}
    best_score = float(best.metrics_dataframe["objective"].agg(cfg.mode))
    flags = " ".join(f"-S '{override(k, v)}'" for k, v in best_config.items())
    best_path.parent.mkdir(parents=True, exist_ok=True)
    best_path.write_text(
        f"# best of {len(trials)} trials, {cfg.metric} = {best_score:.5f} (MLflow run {parent_id})\n"
        f"# apply: dvc exp run {flags}   (or merge these keys into params.yaml)\n"
        + yaml.safe_dump(best_fragment(best_config), sort_keys=False)
    )
    for key, value in best_config.items():
        client.log_param(parent_id, f"best.{key}", value)
    client.log_metric(parent_id, f"best.{trk.metric_key(cfg.metric)}", best_score)
    client.log_artifact(parent_id, str(best_path))
    client.set_terminated(parent_id, "FINISHED")
    summary = {
        "best": best_config,
        "best_score": best_score,
        "metric": cfg.metric,
        "best_file": str(best_path),
        "dvc_exp_run": f"dvc exp run {flags}",
        "trials": trials,
        "completed": len(scored),
        "stopped_early": sum(1 for t in scored if t["epochs"] < cfg.epochs),
        "mlflow_parent_run_id": parent_id,
        "tracking_uri": uri,
        "seconds": round(time.perf_counter() - started, 1),
    }
    log.info("tune: best %s = %.5f with %s -> %s", cfg.metric, best_score, best_config, best_path)
    return summary
