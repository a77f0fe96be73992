"""The ``train`` step: :func:`medrov.model.train.train` inside one MLflow run, with its provenance, per-epoch
metrics, artifacts, the model as a pyfunc and the gating evaluation of its weights."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medrov import paths, tracking
from medrov.config import Params
from medrov.errors import TrackingError
from medrov.steps.common import prompter as make_prompter
from medrov.steps.common import run_record
from medrov.steps.evaluation import epoch_metrics, gate_evaluation
from medrov.tracking.provenance import TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


def log_pseudo_in_force(client: "MlflowClient", run_id: str, pseudo: dict[str, Any] | None) -> None:
    """The mechanisms actually in force (params.yaml may ask for negatives a text-only encoder cannot give)."""
    if not pseudo:
        return
    values = {
        "pseudo.in_force.labels": pseudo.get("labels"),
        "pseudo.in_force.negatives": pseudo.get("negatives"),
        "pseudo.in_force.teacher": pseudo.get("teacher", "none"),
    }
    if pseudo.get("negatives_off_reason"):
        values["pseudo.in_force.negatives_off_reason"] = pseudo["negatives_off_reason"]
    existing = client.get_run(run_id).data.params
    for key, value in values.items():
        if key not in existing:  # a resumed run already has them
            tracking.guard(lambda: client.log_param(run_id, key, str(value)), client.tracking_uri)


def log_train_artifacts(client: "MlflowClient", run_id: str, params: Params, info: dict[str, Any]) -> dict[str, int]:
    """Weights, ultralytics' plots and results, the dataset card and the validation report (where present)."""
    weights = Path(info["weights"])
    tracking.guard(lambda: client.log_artifact(run_id, str(weights), "weights"), client.tracking_uri)
    counts = {
        "weights": 1,
        "train": tracking.log_dir(
            client, run_id, Path(info["save_dir"]), "train", ("*.png", "*.jpg", "*.csv", "*.yaml", "*.json")
        ),
    }
    # whole folders: the Data Docs pages link into their sub-folders
    for key, folder in (("dataset_card", params.tracking.dataset_card), ("validate_report", params.validate_.report)):
        if folder and paths.resolve(folder).is_dir():
            counts[key] = tracking.log_dir(client, run_id, paths.resolve(folder), key, ("**/*",))
    return counts


def train(
    params: Params,
    parent_run_id: str | None = None,
    profile: str | None = None,
    closed_set: bool = False,
    resume: bool = False,
    callbacks: dict[str, list] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a profile inside an MLflow run; the one door of ``medrov train``, Prefect and Ray trials.

    Args:
        params: the run's params (overrides applied).
        parent_run_id: nest the run under this one (a Tune trial under its sweep).
        profile: training profile (default ``train.profile``).
        closed_set: the closed-set YOLOv8 baseline on the same data and budget.
        resume: continue the profile's interrupted run (and its MLflow run, when in the same store).
        callbacks: extra ultralytics callbacks by event; they run after the epoch logger.
        run_name: the MLflow run name (default ``train-<profile>``).
        tags: extra run tags.

    Returns:
        The run summary of :func:`medrov.model.train.train` with ``mlflow`` (tracking URI, run id, model URI,
        artifact counts, gating evaluation run) added; also written to ``runs/<profile>/mlflow.json``.
    """
    from medrov.model import pyfunc
    from medrov.model import train as model_train

    if not params.tracking.enabled:
        return model_train.train(params, profile, closed_set, resume, callbacks)
    if not resume:  # everything the run needs is checked before the run exists (a bad device makes no FAILED run)
        model_train.check_train_args(params, profile, closed_set)
    record = run_record(params, profile, closed_set)
    previous = json.loads(record.read_text()) if resume and record.is_file() else {}
    uri = tracking.tracking_uri(params.tracking)
    run_id = previous.get("run_id") if previous.get("tracking_uri") == uri else None
    name = run_name or f"train-{profile or params.train.profile}{'-closed' if closed_set else ''}"
    run_tags = {
        f"{TAG}profile": profile or params.train.profile,
        f"{TAG}kind": "closed-set" if closed_set else "open-vocabulary",
        **(tags or {}),
    }
    with tracking.step_run(
        params,
        "train",
        run_id=run_id,
        parent_run_id=parent_run_id,
        run_name=name,
        tags=run_tags,
        profile=profile or params.train.profile,
    ) as run:
        run_id = run.info.run_id
        if not previous.get("run_id") or previous.get("run_id") != run_id:  # a resumed run has its input already
            tracking.log_dataset(tracking.connect(params.tracking), run_id, params)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(
            json.dumps({"tracking_uri": uri, "run_id": run_id, "experiment_id": run.info.experiment_id}, indent=2)
        )
        logger = tracking.EpochLogger(params, run_id, functools.partial(epoch_metrics, params))
        merged = {**(callbacks or {})}
        # the logger first: a caller's callback may end the training (Ray stops a trial inside its report)
        merged["on_fit_epoch_end"] = [logger, *merged.get("on_fit_epoch_end", [])]
        info = model_train.train(params, profile, closed_set, resume, merged)
        client = tracking.connect(params.tracking)
        client.set_tag(run_id, f"{TAG}weights", info["weights"])
        for key, value in tracking.encoder_tags(info.get("encoder"), params).items():
            client.set_tag(run_id, key, value)
        log_pseudo_in_force(client, run_id, info.get("pseudo"))
        counts = log_train_artifacts(client, run_id, params, info)
        prompter = logger.prompter
        if prompter is None and info.get("encoder"):
            prompter = make_prompter(params, info["encoder"]["spec"])
        model = pyfunc.log_model(
            paths.resolve(params.train.data),
            Path(info["weights"]),
            prompter if info.get("encoder") else None,
            imgsz=info["args"].get("imgsz") if "args" in info else None,
        )
        client.set_tag(run_id, f"{TAG}model_uri", model.model_uri)
        client.set_tag(run_id, f"{TAG}weights_artifact", f"weights/{Path(info['weights']).name}")
        tracking.describe_run(client, run_id, training_description(params, info, profile))
    info["mlflow"] = {"tracking_uri": uri, "run_id": run_id, "model_uri": model.model_uri, "artifacts": counts}
    record.write_text(json.dumps({**json.loads(record.read_text()), "model_uri": model.model_uri}, indent=2))
    log.info("mlflow: train run %s logged (%s artifacts, model %s)", run_id, sum(counts.values()), model.model_uri)
    info["mlflow"]["gate_eval_run_id"] = gate_evaluation(params, run_id, Path(info["weights"]), prompter)
    return info


def training_description(params: Params, info: dict[str, Any], profile: str | None = None) -> str:
    """What a train run did, in one paragraph (the run's description in the MLflow UI)."""
    args = info.get("args") or {}
    encoder = (info.get("encoder") or {}).get("identity", "none (closed set)")
    pseudo = info.get("pseudo") or {}
    data = tracking.data_tags(params)
    return (
        f"{info.get('kind', 'open-vocabulary')} training, profile **{profile or params.train.profile}**: "
        f"`{args.get('model')}`, {info.get('epochs_done')} of {args.get('epochs')} epochs, "
        f"batch {args.get('batch')}, "
        f"{args.get('imgsz')} px, device {args.get('device')}. Data: `{params.train.data}` "
        f"(DVC md5 {data[f'{TAG}data.omnis_dvc_md5']}). Text encoder: `{encoder}`. "
        f"Pseudo-labels {'on' if pseudo.get('labels') else 'off'}, "
        f"negatives {'on' if pseudo.get('negatives') else 'off'}"
        + (f" ({pseudo['negatives_off_reason']})" if pseudo.get("negatives_off_reason") else "")
        + "."
    )


def log_weights_run(params: Params, weights: str | Path, encoder_spec: str | None = None, name: str = "import") -> str:
    """Track weights trained elsewhere (another machine, an older checkout) as a ``train`` run with the pyfunc,
    so they can be evaluated and promoted like any other; returns the run id.

    Raises:
        TrackingError: the weights file does not exist.
    """
    from medrov.model import pyfunc
    from medrov.model.detector import Detector
    from medrov.model.evaluate import _train_imgsz

    weights = Path(weights)
    if not weights.is_file():
        raise TrackingError("weights not found", weights)
    open_vocabulary = Detector(weights).open_vocabulary
    prompter = make_prompter(params, encoder_spec or params.text.encoder) if open_vocabulary else None
    kind = "open-vocabulary" if open_vocabulary else "closed-set"
    with tracking.step_run(
        params, "train", run_name=name, tags={f"{TAG}kind": kind, f"{TAG}imported_weights": str(weights)}
    ) as run:
        client = tracking.connect(params.tracking)
        tracking.guard(lambda: client.log_artifact(run.info.run_id, str(weights), "weights"), client.tracking_uri)
        for key, value in tracking.encoder_tags(prompter.describe() if prompter else None, params).items():
            client.set_tag(run.info.run_id, key, value)
        model = pyfunc.log_model(paths.resolve(params.train.data), weights, prompter, imgsz=_train_imgsz(weights))
        client.set_tag(run.info.run_id, f"{TAG}model_uri", model.model_uri)
        client.set_tag(run.info.run_id, f"{TAG}weights_artifact", f"weights/{weights.name}")
    return run.info.run_id
