"""The model registry: champion promoted only when it wins, rollback, listing. Aliases, never stages.

``challenger`` is the latest candidate, ``champion`` moves only when the candidate passes the gate of
:func:`decide`; each decision is written as tags on the version. A run without an evaluation on the gating split
is measured by a function the caller hands in (the promote step evaluates its weights): this module knows no
model code.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from medrov.config import Params, PromoteParams
from medrov.errors import TrackingError
from medrov.tracking.provenance import TAG
from medrov.tracking.store import connect, existing_run, guard, param_value

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# (weights file, split, train run id, weights label) -> None: evaluates and records an evaluate run of the train run
Measure = Callable[[Path, str, str, str], None]


def gate_from_metrics(metrics: dict[str, float], split: str, metric: str) -> dict[str, Any] | None:
    """Gating numbers out of an evaluate run's metrics (None when it has no base+novel value)."""
    if f"{split}/{metric}/all" not in metrics:
        return None
    prefix = f"{split}/modality/"
    modality = {
        k[len(prefix) : -len(f"/{metric}")]: v
        for k, v in metrics.items()
        if k.startswith(prefix) and k.endswith(f"/{metric}")
    }
    return {
        "split": split,
        "metric": metric,
        "all": metrics[f"{split}/{metric}/all"],
        "base": metrics.get(f"{split}/{metric}/base"),
        "novel": metrics.get(f"{split}/{metric}/novel"),
        "modality": dict(sorted(modality.items())),
    }


def decide(challenger: dict[str, Any], champion: dict[str, Any] | None, section: PromoteParams) -> dict[str, Any]:
    """The promotion rule, pure: the base+novel metric must gain at least ``min_gain`` over the champion's and no
    modality of the champion may drop by more than ``max_modality_drop`` (a modality the challenger was not
    evaluated on counts as a failure). No champion: the challenger becomes it."""
    metric = challenger["metric"]
    if champion is None:
        return {
            "promote": True,
            "decision": "first",
            "gain": None,
            "failures": [],
            "reason": "no champion yet: the first model becomes champion",
        }
    eps = 1e-9
    gain = challenger["all"] - champion["all"]
    failures = []
    if gain < section.min_gain - eps:
        failures.append(
            f"base+novel {metric} {challenger['all']:.4f} vs champion {champion['all']:.4f}: "
            f"gain {gain:+.4f} < min_gain {section.min_gain:g}"
        )
    drops = {}
    for modality, before in champion["modality"].items():
        after = challenger["modality"].get(modality)
        if after is None:
            failures.append(f"modality {modality} not evaluated for the challenger")
            continue
        drops[modality] = before - after
        if before - after > section.max_modality_drop + eps:
            failures.append(
                f"{modality} {metric} dropped {before - after:.4f} ({before:.4f} -> {after:.4f}) "
                f"> max_modality_drop {section.max_modality_drop:g}"
            )
    if failures:
        return {
            "promote": False,
            "decision": "refused",
            "gain": gain,
            "drops": drops,
            "failures": failures,
            "reason": "; ".join(failures),
        }
    worst = max(drops.values(), default=0.0)
    return {
        "promote": True,
        "decision": "promoted",
        "gain": gain,
        "drops": drops,
        "failures": [],
        "reason": f"base+novel {metric} {champion['all']:.4f} -> {challenger['all']:.4f} (gain {gain:+.4f} >= "
        f"{section.min_gain:g}); largest modality drop {worst:+.4f} <= {section.max_modality_drop:g}",
    }


def gating_metrics(
    client: "MlflowClient", run, split: str, metric: str, params: Params | None = None
) -> dict[str, Any] | None:
    """The latest finished evaluation of ``run`` on ``split`` (with the evaluation settings of ``params``, when
    given); None when there is none."""
    query = (
        f"tags.`{TAG}step` = 'evaluate' and tags.`{TAG}train_run_id` = '{run.info.run_id}' "
        f"and tags.`{TAG}split` = '{split}' and attributes.status = 'FINISHED'"
    )
    if params is not None:  # an evaluation with other thresholds measures something else
        for key in ("conf", "iou", "max_det"):
            query += f" and params.`evaluate.{key}` = '{param_value(getattr(params.evaluate, key))}'"
    found = guard(
        lambda: client.search_runs(
            [run.info.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        ),
        client.tracking_uri,
    )
    if not found:
        return None
    gate = gate_from_metrics(found[0].data.metrics, split, metric)
    if gate is not None:
        gate.update(eval_run_id=found[0].info.run_id, presence_md5=found[0].data.tags.get(f"{TAG}data.presence_md5"))
    return gate


def _gate_of(params: Params, client: "MlflowClient", run, split: str, measure: Measure | None) -> dict[str, Any]:
    """Gating metrics of a train run: its latest evaluation on ``split``, else ``measure`` its weights now."""
    metric = params.promote.metric
    gate = gating_metrics(client, run, split, metric, params)
    if gate is not None:
        return gate
    if measure is None:
        raise TrackingError(f"run {run.info.run_id} has no {split} evaluation with the current evaluate settings")
    artifact = run.data.tags.get(f"{TAG}weights_artifact", "weights/best.pt")
    log.info("promote: run %s has no %s evaluation; evaluating its %s", run.info.run_id, split, artifact)
    import mlflow

    with tempfile.TemporaryDirectory(prefix="medrov-gate-") as tmp:
        local = guard(
            lambda: mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path=artifact, dst_path=tmp, tracking_uri=client.tracking_uri
            ),
            client.tracking_uri,
        )
        measure(Path(local), split, run.info.run_id, f"runs:/{run.info.run_id}/{artifact}")
    gate = gating_metrics(client, run, split, metric, params)
    if gate is None:
        raise TrackingError(
            f"run {run.info.run_id}: evaluation on {split} produced no base+novel {metric} "
            f"(does the {split} split have boxes?)"
        )
    return gate


def _gate_tags(gate: dict[str, Any]) -> dict[str, str]:
    tags = {
        f"{TAG}gate.split": gate["split"],
        f"{TAG}gate.metric": gate["metric"],
        f"{TAG}gate.all": f"{gate['all']:.6f}",
        f"{TAG}gate.eval_run_id": str(gate.get("eval_run_id")),
    }
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
        raise TrackingError(
            f"{client.tracking_uri}: cannot read alias {name}@{alias}: {str(exc).splitlines()[0]}"
        ) from exc


def promote(params: Params, run_id: str, split: str | None = None, measure: Measure | None = None) -> dict[str, Any]:
    """Register the model of train run ``run_id`` as a version of ``promote.model_name``, alias it ``challenger``,
    and move ``champion`` to it only when :func:`decide` says so. Everything is read and measured before the
    registry is written; the decision and its numbers become tags on the version.

    Args:
        params: params (``promote``, ``tracking``, ``evaluate`` settings of the gating evaluation).
        run_id: the train run whose logged model is the candidate.
        split: split of the gating metrics (default ``promote.split``).
        measure: evaluates a run's weights when it has no evaluation on ``split`` (see :data:`Measure`).

    Raises:
        TrackingError: the store is unreachable, the run is unknown or has no model, evaluation gave no metric.
    """
    section = params.promote
    split = split or section.split
    client = connect(params.tracking)
    uri, name = client.tracking_uri, section.model_name
    run = existing_run(client, run_id)
    if run is None:
        raise TrackingError(f"run {run_id} not found in {uri}")
    model_uri = run.data.tags.get(f"{TAG}model_uri")
    if not model_uri:
        raise TrackingError(f"run {run_id} has no logged model (only train runs can be promoted)")
    champion_version = _alias(client, name, "champion")
    if champion_version is not None and champion_version.run_id == run_id:
        return _already_champion(name, champion_version, run_id)
    challenger = _gate_of(params, client, run, split, measure)  # may evaluate: outside the lock
    from filelock import Timeout

    lock = _registry_lock(uri, name)
    try:
        with lock:
            # re-read under the lock: another promote may have moved the champion or registered this run meanwhile
            return _decide_and_write(params, client, run, model_uri, challenger, split, measure)
    except Timeout:
        raise TrackingError(
            f"another promote of {name} has held the registry lock for {lock.timeout:g} s", lock.lock_file
        ) from None


def _already_champion(name: str, champion_version, run_id: str) -> dict[str, Any]:
    return _summary(
        name,
        champion_version.version,
        {
            "promote": False,
            "decision": "already champion",
            "gain": None,
            "failures": [],
            "reason": "this run's model is the champion already",
        },
        None,
        None,
        champion_version.version,
        run_id,
    )


def _registry_lock(uri: str, name: str):
    """One promotion at a time per registered model: a lock next to an embedded store, else one per host and URI.

    A server is shared by hosts this lock cannot see: there, :func:`_decide_and_write` re-reads the alias after
    setting it and reports what took effect.
    """
    import hashlib

    from filelock import FileLock

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        path = db.with_name(f"{db.name}.{name}.promote.lock")
    else:
        key = hashlib.blake2b(f"{uri}\0{name}".encode(), digest_size=8).hexdigest()
        path = Path(tempfile.gettempdir()) / f"medrov-promote-{key}.lock"
    return FileLock(str(path), timeout=600)


def _decide_and_write(
    params: Params,
    client: "MlflowClient",
    run,
    model_uri: str,
    challenger: dict[str, Any],
    split: str,
    measure: Measure | None,
) -> dict[str, Any]:
    """The decision against the current champion and the registry writes (under :func:`_registry_lock`)."""
    section = params.promote
    uri, name, run_id = client.tracking_uri, section.model_name, run.info.run_id
    champion_version = _alias(client, name, "champion")
    if champion_version is not None and champion_version.run_id == run_id:
        return _already_champion(name, champion_version, run_id)
    existing = guard(lambda: client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"), uri)
    champion = None
    if champion_version is not None:
        champion_run = existing_run(client, champion_version.run_id)
        if champion_run is None:
            raise TrackingError(
                f"champion {name} v{champion_version.version}: its run {champion_version.run_id} is gone"
            )
        champion = _gate_of(params, client, champion_run, split, measure)
    decision = decide(challenger, champion, section)
    if champion and challenger.get("presence_md5") != champion.get("presence_md5"):
        decision["note"] = "challenger and champion were evaluated on different data (presence.csv differs)"

    # writes: only after everything above succeeded
    if existing:
        version = str(max(existing, key=lambda v: int(v.version)).version)
    else:
        import mlflow

        with contextlib.suppress(Exception):
            client.create_registered_model(name, description="MedROV open-vocabulary detector (YOLO-World on Omnis)")
        # register_model (not create_model_version) links both ways: the logged model lists this registered
        # version and the version page its logged model and source run
        version = str(guard(lambda: mlflow.register_model(model_uri, name, await_registration_for=0), uri).version)
        guard(
            lambda: client.update_model_version(
                name,
                version,
                description=(
                    f"Trained in run {run_id}; registered by `medrov promote` as challenger on {split}; "
                    f"gate: {decision['decision']}: "
                    f"{decision['reason']}"
                ),
            ),
            uri,
        )
    tags = {
        **_gate_tags(challenger),
        f"{TAG}promote.decision": decision["decision"],
        f"{TAG}promote.reason": decision["reason"],
        f"{TAG}promote.at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        f"{TAG}promote.champion_version": str(champion_version.version) if champion_version else "none",
        f"{TAG}promote.min_gain": f"{section.min_gain:g}",
        f"{TAG}promote.max_modality_drop": f"{section.max_modality_drop:g}",
    }
    if champion:
        tags[f"{TAG}promote.champion.all"] = f"{champion['all']:.6f}"
        tags[f"{TAG}promote.gain"] = f"{decision['gain']:+.6f}"
        tags.update({f"{TAG}promote.drop.{m}": f"{d:+.6f}" for m, d in decision.get("drops", {}).items()})
    if decision.get("note"):
        tags[f"{TAG}promote.note"] = decision["note"]
    for key, value in tags.items():
        guard(lambda: client.set_model_version_tag(name, version, key, value), uri)
    guard(lambda: client.set_registered_model_alias(name, "challenger", version), uri)
    if decision["promote"]:
        previous = str(champion_version.version) if champion_version else ""
        guard(lambda: client.set_model_version_tag(name, version, f"{TAG}previous_champion", previous), uri)
        guard(lambda: client.set_registered_model_alias(name, "champion", version), uri)
        now = _alias(client, name, "champion")
        if now is None or str(now.version) != str(version):  # a writer this lock cannot see (another host) won
            decision = {
                **decision,
                "promote": False,
                "decision": "superseded",
                "reason": f"champion moved to v{getattr(now, 'version', None)} by another promote meanwhile",
            }
            guard(lambda: client.set_model_version_tag(name, version, f"{TAG}promote.decision", "superseded"), uri)
    log.info("promote: %s v%s %s: %s", name, version, decision["decision"], decision["reason"])
    return _summary(
        name, version, decision, challenger, champion, champion_version.version if champion_version else None, run_id
    )


def _summary(name, version, decision, challenger, champion, champion_version, run_id) -> dict[str, Any]:
    def strip(gate):
        return (
            None
            if gate is None
            else {k: v for k, v in gate.items() if k in ("split", "metric", "all", "base", "novel", "modality")}
        )

    return {
        "model": name,
        "version": str(version),
        "run_id": run_id,
        "decision": decision["decision"],
        "promoted": decision["promote"],
        "reason": decision["reason"],
        "note": decision.get("note"),
        "gain": decision.get("gain"),
        "challenger": strip(challenger),
        "champion": strip(champion),
        "previous_champion_version": None if champion_version is None else str(champion_version),
    }


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
        raise TrackingError(
            f"{name} v{current.version} was the first champion: there is no earlier one to roll back to"
        )
    target = guard(lambda: client.get_model_version(name, previous), uri)
    guard(
        lambda: client.set_model_version_tag(
            name, str(current.version), f"{TAG}rolled_back", time.strftime("%Y-%m-%dT%H:%M:%S%z")
        ),
        uri,
    )
    guard(lambda: client.set_registered_model_alias(name, "champion", str(target.version)), uri)
    log.info("rollback: %s champion v%s -> v%s", name, current.version, target.version)
    return {
        "model": name,
        "from_version": str(current.version),
        "to_version": str(target.version),
        "run_id": target.run_id,
    }


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
    versions = guard(lambda: client.search_model_versions(f"name = '{name}'"), client.tracking_uri)
    rows = []
    modality_tag = f"{TAG}gate.modality."
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        tags = v.tags or {}
        rows.append(
            {
                "version": str(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "run_id": v.run_id,
                "split": tags.get(f"{TAG}gate.split"),
                "metric": tags.get(f"{TAG}gate.metric"),
                "all": tags.get(f"{TAG}gate.all"),
                "base": tags.get(f"{TAG}gate.base"),
                "novel": tags.get(f"{TAG}gate.novel"),
                "modality": {k[len(modality_tag) :]: val for k, val in tags.items() if k.startswith(modality_tag)},
                "decision": tags.get(f"{TAG}promote.decision"),
                "reason": tags.get(f"{TAG}promote.reason"),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(v.creation_timestamp / 1000)),
            }
        )
    return rows
