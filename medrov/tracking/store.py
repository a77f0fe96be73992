"""The MLflow store and the run context: where runs live, one run per step, metrics and artifacts by run id.

The store is ``MLFLOW_TRACKING_URI``, else ``tracking.uri``, else the embedded ``sqlite:///<project>/mlflow.db``
(artifacts in ``<project>/mlartifacts``); the same code talks to an ``mlflow server``. Runs are addressed by id
through :class:`mlflow.MlflowClient` where they cross threads or processes (MLflow's active run is per thread).

Metric names: an evaluate run logs ``<split>/<metric>/<group>`` (group all = base+novel, base, novel) and
``<split>/modality/<modality>/<metric>``; a train run logs ultralytics' losses and metrics per epoch and the same
open-vocabulary metrics prefixed ``epoch/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from medrov import paths
from medrov.config import Params, TrackingParams, flatten
from medrov.errors import TrackingError
from medrov.tracking.provenance import TAG, encoder_tags, run_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

GROUPS = ("all", "base", "novel")
METRICS = ("map50", "map50_95")
T = TypeVar("T")


def tracking_uri(section: TrackingParams) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri`` (relative SQLite paths from the project root), else
    the embedded ``sqlite:///<project>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or section.uri
    if not uri:
        return f"sqlite:///{paths.project_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{paths.resolve(uri[len('sqlite:///') :])}"
    return uri


def is_server(uri: str) -> bool:
    """Whether ``uri`` names an MLflow server (not a local store)."""
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
        raise TrackingError(
            f"MLflow server {uri} is unreachable ({reason}); start it, or set tracking.uri / "
            f"MLFLOW_TRACKING_URI to a reachable store (unset: embedded SQLite)"
        ) from None
    if response.status_code != 200:
        raise TrackingError(f"MLflow server {uri} is unhealthy: /health answered HTTP {response.status_code}")


def guard(call: Callable[[], T], uri: str) -> T:
    """Run an MLflow call; turn its exceptions into one-line TrackingErrors naming the store."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"{uri}: {message[:300]}") from exc


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
    if guard(lambda: client.get_experiment_by_name(section.experiment), uri) is None:
        # a local store would put artifacts in ./mlruns of whatever the working directory is: keep them beside the
        # store (the project's mlflow.db: <project>/mlartifacts), so a store elsewhere (a test's) never writes here
        location = None if is_server(uri) else (_artifact_root(uri, section) / section.experiment).as_uri()
        with contextlib.suppress(Exception):  # a concurrent creator wins the race; we read its experiment below
            client.create_experiment(section.experiment, artifact_location=location)
    return client


def _artifact_root(uri: str, section: TrackingParams) -> Path:
    """Where a local store's experiments keep artifacts: ``tracking.artifacts`` taken from the folder of the
    SQLite file (the project root for the embedded store), from the project root for other local stores."""
    if uri.startswith("sqlite:///") and not Path(section.artifacts).is_absolute():
        return Path(uri[len("sqlite:///") :]).resolve().parent / section.artifacts
    return paths.resolve(section.artifacts)


def experiment_id(client: "MlflowClient", section: TrackingParams) -> str:
    """The id of ``tracking.experiment`` in the client's store.

    Raises:
        TrackingError: the experiment does not exist and could not be created.
    """
    exp = guard(lambda: client.get_experiment_by_name(section.experiment), client.tracking_uri)
    if exp is None:
        raise TrackingError(f"experiment {section.experiment!r} cannot be created in {client.tracking_uri}")
    return exp.experiment_id


def param_value(value: Any) -> str:
    """A params value as MLflow stores it (lists and dicts as JSON, cut to MLflow's 6000 characters)."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


# the params keys each step reads (dotted prefixes); its training profile is added resolved. Other steps log all.
STEP_SETTINGS = {
    "train": (
        "text.",
        "pseudo.",
        "train.data",
        "train.profile",
        "train.project",
        "evaluate.conf",
        "evaluate.iou",
        "evaluate.max_det",
        "tracking.epoch_eval",
        "promote.split",
    ),
    "evaluate": ("evaluate.", "text.", "train.data", "train.profile"),
    "tune": ("tune.", "pseudo.", "train.data"),
}


def settings_in_force(params: Params, step: str, profile: str | None = None) -> dict[str, Any]:
    """The dotted params keys a step reads, with only the training profile it uses (``train.profiles.<p>.*``):
    what a run's params page should show (params.yaml in full is the run's ``params.yaml`` artifact)."""
    flat = flatten(params)
    prefixes = STEP_SETTINGS.get(step)
    if prefixes is None:
        return flat
    name = profile or (params.tune.profile if step == "tune" else params.train.profile)
    sections = tuple(p for p in (*prefixes, f"train.profiles.{name}.") if p.endswith("."))
    keys = {p for p in prefixes if not p.endswith(".")}  # exact keys: train.profile is no prefix of train.profiles
    return {k: v for k, v in flat.items() if k in keys or k.startswith(sections)}


def log_params(
    client: "MlflowClient", run_id: str, params: Params, step: str | None = None, profile: str | None = None
) -> None:
    """The settings in force for ``step`` as params (every key when ``step`` is None) and all of params.yaml
    (after overrides) as the ``params.yaml`` artifact."""
    from mlflow.entities import Param

    chosen = flatten(params) if step is None else settings_in_force(params, step, profile)
    flat = [Param(k, param_value(v)) for k, v in sorted(chosen.items())]
    for i in range(0, len(flat), 100):
        guard(lambda: client.log_batch(run_id, params=flat[i : i + 100]), client.tracking_uri)
    whole = params.model_dump(mode="json", by_alias=True)
    guard(lambda: client.log_dict(run_id, whole, "params.yaml"), client.tracking_uri)


def describe_run(client: "MlflowClient", run_id: str, text: str) -> None:
    """The run's description (the MLflow UI's "Description" box: the ``mlflow.note.content`` tag)."""
    guard(lambda: client.set_tag(run_id, "mlflow.note.content", text), client.tracking_uri)


def evaluation_description(result: dict[str, Any], split: str) -> str:
    """What an evaluate run did, in one paragraph."""
    groups = ", ".join(f"{g} {result[g]['map50']:.4f}" for g in GROUPS if isinstance(result.get(g), dict))
    encoder = (result.get("encoder") or {}).get("identity", "none (closed set)")
    return (
        f"Open-vocabulary evaluation of `{result.get('weights')}` on the **{split}** split "
        f"({result.get('images')} images, prompts = the classes each source annotates) "
        f"at {result.get('imgsz')} px; "
        f"text encoder `{encoder}`. mAP50: {groups or 'no ground truth'}."
    )


def log_dataset(client: "MlflowClient", run_id: str, params: Params, context: str = "training") -> None:
    """The Omnis folder as the run's dataset input (the UI's Dataset column), digest = its DVC md5 from
    dvc.lock (else the md5 of its manifest), profile = its counts."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from medrov.tracking.provenance import data_dir, dvc_hash, md5_file

    folder = data_dir(params)
    manifest = folder / "manifest.parquet"
    digest = dvc_hash(folder) or (md5_file(manifest) if manifest.is_file() else "none")
    source = resolve_dataset_source(str(folder))
    dataset = MetaDataset(source=source, name="omnis", digest=digest.removesuffix(".dir")[:36])
    entity = dataset._to_mlflow_entity()
    given = DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    guard(lambda: log_inputs_once_created(client, run_id, given), client.tracking_uri)


# what SQL stores say when two runs insert the same new dataset row at once (PostgreSQL, SQLite, MySQL)
_DUPLICATE_ROW = ("UniqueViolation", "UNIQUE constraint failed", "Duplicate entry", "duplicate key value")


def log_inputs_once_created(client: "MlflowClient", run_id: str, given, attempts: int = 3) -> None:
    """``log_inputs``, retried when a concurrent run created the same dataset row between MLflow's lookup and its
    insert (MLflow's get-or-create is not atomic): the retry finds the row and only links it to this run."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=[given])
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(mark in str(exc) for mark in _DUPLICATE_ROW):
                raise
            time.sleep(0.2 * (attempt + 1))


@contextlib.contextmanager
def step_run(
    params: Params,
    step: str,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
    profile: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one step (``train``, ``evaluate``, ``tune``...): the settings in force for the step as
    params (``profile``: the training profile it uses; :func:`settings_in_force`), params.yaml as an artifact,
    provenance tags, status.

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
    kwargs: dict[str, Any] = (
        {"run_id": run_id}
        if run_id
        else {
            "experiment_id": experiment_id(client, params.tracking),
            "run_name": run_name or step,
            "nested": nested,
            "parent_run_id": None if nested else parent_run_id,
        }
    )
    run = guard(lambda: mlflow.start_run(**kwargs, tags=all_tags), client.tracking_uri)
    with run, _sigterm_raises():
        if not run_id:
            log_params(client, run.info.run_id, params, step, profile)
        log.info("mlflow: %s run %s in %s", step, run.info.run_id, client.tracking_uri)
        try:
            yield run
        except KeyboardInterrupt:  # SIGINT, or SIGTERM turned into one below: the run was killed, it did not fail
            log.warning("mlflow: %s run %s interrupted: ended KILLED", step, run.info.run_id)
            mlflow.end_run("KILLED")
            raise


class Terminated(KeyboardInterrupt):
    """SIGTERM received inside a step run (a KeyboardInterrupt, so no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While a step run is open, SIGTERM raises :class:`Terminated` so the run is ended KILLED, not left RUNNING.

    Only the main thread can set a handler; elsewhere (a Prefect task thread) the default stays.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def existing_run(client: "MlflowClient", run_id: str | None):
    """The run ``run_id`` of the client's store, or None (no id, or no such run)."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def metric_key(name: str) -> str:
    """A metric name as MLflow accepts it (``metrics/mAP50(B)`` -> ``metrics/mAP50B``, as ultralytics logs it)."""
    return name.replace("(", "").replace(")", "")


def eval_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flat metrics of an evaluation result: ``<prefix>/<metric>/<group>`` and
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
    return out


def log_metrics(client: "MlflowClient", run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log a dict of metrics in batches, names cleaned by :func:`metric_key`."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()]
    for i in range(0, len(items), 1000):
        guard(lambda: client.log_batch(run_id, metrics=items[i : i + 1000]), client.tracking_uri)


def log_dir(client: "MlflowClient", run_id: str, folder: Path, artifact_path: str, patterns: tuple[str, ...]) -> int:
    """Log the files of ``folder`` matching ``patterns`` under ``artifact_path``, keeping sub-folders; the count."""
    files = sorted({f for pattern in patterns for f in folder.glob(pattern) if f.is_file()})
    for file in files:
        rel = file.parent.relative_to(folder)
        target = artifact_path if str(rel) == "." else f"{artifact_path}/{rel.as_posix()}"
        guard(lambda: client.log_artifact(run_id, str(file), target), client.tracking_uri)
    return len(files)


def log_evaluation(client: "MlflowClient", run_id: str, result: dict[str, Any], split: str, params: Params) -> None:
    """An evaluation result into an ``evaluate`` run: its metrics, encoder tags and the full JSON."""
    log_metrics(client, run_id, {**eval_metrics(result, split), f"{split}/seconds": float(result.get("seconds", 0))})
    # counts describe the run, they are not scores to chart: tags, once
    counts = {
        f"{TAG}{split}.images": result.get("images"),
        f"{TAG}{split}.classes": (result.get("all") or {}).get("classes"),
    }
    tags = {**encoder_tags(result.get("encoder"), params), **{k: str(v) for k, v in counts.items() if v is not None}}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    describe_run(client, run_id, evaluation_description(result, split))
    guard(
        lambda: client.log_dict(run_id, json.loads(json.dumps(result, default=str)), f"eval_{split}.json"),
        client.tracking_uri,
    )


def record_evaluation(params: Params, train_run_id: str, result: dict[str, Any], split: str) -> str:
    """Log an already computed evaluation ``result`` as an ``evaluate`` run of ``train_run_id``; returns its id
    (for evaluations made elsewhere, e.g. on another machine, and for tests)."""
    client = connect(params.tracking)
    tags = {f"{TAG}split": split, f"{TAG}train_run_id": train_run_id, f"{TAG}weights": str(result.get("weights", ""))}
    with step_run(params, "evaluate", parent_run_id=train_run_id, tags=tags, run_name=f"evaluate-{split}") as run:
        log_evaluation(client, run.info.run_id, result, split, params)
    return run.info.run_id


def load_pyfunc(params: Params, model_uri: str):
    """Load a registry or run model (``models:/medrov@champion``, ``runs:/ID/model``) from the configured store."""
    import mlflow.pyfunc

    client = connect(params.tracking)
    return guard(lambda: mlflow.pyfunc.load_model(model_uri), client.tracking_uri)


def champion_uri(params: Params) -> str | None:
    """``models:/<name>@champion`` when the configured registry has a champion, else None; never creates a store
    (an embedded SQLite file that does not exist has no champion) and a server that does not answer is a warning."""
    from mlflow import MlflowClient

    uri = tracking_uri(params.tracking)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
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
