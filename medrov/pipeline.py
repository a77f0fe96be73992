"""The DVC pipeline as functions: pull, repro, push, and a summary of its metrics.

What the Prefect pipeline flow and ``bench/orchestration.py`` call (no Prefect here). Each command runs in the
project root with this interpreter's environment, one at a time (two ``dvc repro`` in one workspace fail on
DVC's lock, see FACTS.md); a failure raises :class:`StepFailed` carrying the command's own error lines.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from medrov import paths
from medrov.errors import StepFailed

log = logging.getLogger(__name__)
# lines that say why a step failed: DVC's ERROR lines, the medrov CLI's one-line error, a failed gate check
_ERROR_LINE = re.compile(r"^\s*(ERROR:|error:|FAIL |Traceback|\w+(Error|Exception|Failed):)")


def command_env() -> dict[str, str]:
    """This environment, with this interpreter's bin folder first so DVC stages find the same ``medrov``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def error_lines(output: str, limit: int = 8) -> list[str]:
    """The lines of a command's output that state an error (the last ``limit`` of them)."""
    lines = [line.strip() for line in output.splitlines() if _ERROR_LINE.match(line)]
    return lines[-limit:]


def run_command(
    args: list[str], root: Path | None = None, what: str | None = None, timeout: float | None = None
) -> str:
    """Run a command in the project root; returns its output.

    Raises:
        StepFailed: it exited non-zero; the message names the step and quotes its error lines.
    """
    cwd = root or paths.project_root()
    name = what or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(args))
    started = time.perf_counter()
    log.info("%s: running in %s", name, cwd)
    result = subprocess.run(args, cwd=cwd, env=command_env(), capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        reasons = error_lines(output) or output.strip().splitlines()[-5:] or ["(no output)"]
        raise StepFailed(f"{name} failed (exit {result.returncode}): " + " | ".join(reasons), cwd)
    log.info("%s: done in %.1f s", name, time.perf_counter() - started)
    return output


def dvc(args: list[str], root: Path | None = None, timeout: float | None = None) -> str:
    """``dvc ARGS`` with this interpreter's DVC."""
    return run_command(
        [sys.executable, "-m", "dvc", *args], root, what=f"dvc {' '.join(args)}".strip(), timeout=timeout
    )


def default_remote(root: Path | None = None) -> str | None:
    """The default DVC remote's name, or None when none is configured."""
    name = dvc(["remote", "default"], root).strip()
    return name or None


def repro(root: Path | None = None, targets: list[str] | None = None, force: bool = False) -> dict[str, Any]:
    """``dvc repro [targets]``; returns the stages that ran and whether it was a no-op."""
    started = time.perf_counter()
    output = dvc(["repro", *(["--force"] if force else []), *(targets or [])], root)
    ran = re.findall(r"Running stage '([^']+)'", output)
    return {"stages_run": ran, "up_to_date": not ran, "seconds": round(time.perf_counter() - started, 2)}


def fresh_metrics(root: Path | None = None, since: float = 0.0) -> set[str]:
    """The ``metrics/*.json`` files written at or after ``since`` (a ``time.time()``)."""
    folder = (root or paths.project_root()) / "metrics"
    return {f.name for f in folder.glob("*.json") if f.stat().st_mtime >= since} if folder.is_dir() else set()


def read_metrics(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every ``metrics/*.json`` of the project, by file name."""
    folder = (root or paths.project_root()) / "metrics"
    out = {}
    for file in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            out[file.name] = json.loads(file.read_text())
        except ValueError as exc:
            out[file.name] = {"error": f"not valid JSON: {exc}"}
    return out


def _headline(name: str, data: dict[str, Any]) -> list[tuple[str, Any]]:
    """The figures of a metrics file worth a line in a run summary: its scalars (the files hold headlines only,
    :mod:`medrov.metric_files`)."""
    return [(k, v) for k, v in data.items() if isinstance(v, (int, float, str, bool)) or v is None][:8]


# which metrics file each DVC stage writes (dvc.yaml)
STAGE_METRICS = {
    "convert": "convert.json",
    "validate": "validate.json",
    "train": "train.json",
    "evaluate": "eval.json",
    "promote": "promote.json",
}


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def stage_line(stage: str, root: Path | None = None) -> str:
    """One line with a stage's figures, read from what it wrote (its metrics file and the detail beside it)."""
    from medrov.config import load_params

    root = root or paths.project_root()
    try:
        cfg = load_params(root / "params.yaml")
    except Exception:  # a broken params file is the repro's own error; the line falls back to the metric file
        cfg = None
    head = _read(root / "metrics" / STAGE_METRICS[stage]) if stage in STAGE_METRICS else {}
    if stage == "convert" and cfg is not None:
        s = _read(paths.resolve(cfg.data.out, root) / "convert_summary.json")
        if s:
            return (
                f"convert: {s.get('converted')} of {s.get('total')} inputs converted, {s.get('quarantined')} quarantined, "  # noqa: E501
                f"{s.get('reused')} reused -> {s.get('images')} images, {s.get('boxes')} boxes"
            )
    if stage == "validate" and cfg is not None and cfg.validate_.report:
        s = _read(paths.resolve(cfg.validate_.report, root) / "validation.json")
        if s:
            verdict = "passed" if s.get("success") else "FAILED"
            return (
                f"validate: {verdict}, {s.get('passed')} of {s.get('expectations')} expectations, {s.get('failed')} failed, "  # noqa: E501
                f"{s.get('warnings')} warnings"
            )
    if stage == "train" and head:
        return f"train: {head.get('epochs')} epochs, ultralytics val mAP50 {_fmt(head.get('val_map50', '-'))}"
    if stage == "evaluate" and head:
        split = cfg.evaluate.split if cfg is not None else "?"
        return (
            f"evaluate: {split} mAP50 {_fmt(head.get('map50', '-'))} (base {_fmt(head.get('base', '-'))}, "
            f"novel {_fmt(head.get('novel', '-'))}), mAP50-95 {_fmt(head.get('map50_95', '-'))}"
        )
    if stage == "promote":
        s = _read(root / "reports" / "promote.json") or head
        if s:
            return f"promote: {s.get('model', 'model')} v{s.get('version')} {s.get('decision')}: {s.get('reason', '')}".rstrip(  # noqa: E501
                ": "
            )
    if head:
        return f"{stage}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in _headline(stage, head))
    return f"{stage}: done"


def _links(decision: dict[str, Any], root: Path) -> dict[str, str]:
    """MLflow UI links of a promote decision: the registry version and the train run (empty when not reachable)."""
    from medrov.config import load_params

    try:
        cfg = load_params(root / "params.yaml")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking.uri or ""
        ui = (uri if uri.startswith(("http://", "https://")) else cfg.tracking.ui).rstrip("/")
    except Exception:
        return {}
    out = {}
    if decision.get("model") and decision.get("version"):
        out["version"] = f"{ui}/#/models/{decision['model']}/versions/{decision['version']}"
    embedded = root / "mlflow.db"
    # only an existing store is asked: opening an embedded one that is not there would create it
    if decision.get("run_id") and (uri.startswith(("http://", "https://")) or (not uri and embedded.is_file())):
        try:
            if uri:
                from medrov import tracking

                client = tracking.connect(cfg.tracking)
            else:
                from mlflow import MlflowClient

                client = MlflowClient(tracking_uri=f"sqlite:///{embedded}")
            experiment = client.get_run(decision["run_id"]).info.experiment_id
            out["run"] = f"{ui}/#/experiments/{experiment}/runs/{decision['run_id']}"
        except Exception as exc:  # the summary still names the run; the link needs the store
            log.info("summary: no link to run %s (%s)", decision["run_id"], exc)
    return out


def summary_markdown(
    steps: list[dict[str, Any]],
    metrics: dict[str, dict[str, Any]],
    title: str = "medrov pipeline run",
    fresh: set[str] | None = None,
    decision: dict[str, Any] | None = None,
    root: Path | None = None,
) -> str:
    """A Markdown run summary: one row per step, the model decision with its MLflow links, then the headline
    metrics, each file marked fresh (written by this run) or from an earlier run.

    Args:
        steps: what each task did (``step``, ``result``, ``seconds``).
        metrics: ``metrics/*.json`` by file name (:func:`read_metrics`).
        title: the heading.
        fresh: the metrics files this run wrote; None marks none as stale (no run context).
        decision: the promote decision of this run (``medrov promote --detail``), if any.
        root: project root, for the MLflow links.
    """
    lines = [f"# {title}", "", "| step | result | seconds |", "|---|---|---|"]
    for step in steps:
        lines.append(f"| {step['step']} | {step['result']} | {step.get('seconds', '')} |")
    if decision:
        when = "this run" if decision.get("_fresh", True) else "an earlier run (the promote stage did not run now)"
        links = _links(decision, root or paths.project_root())
        version = f"{decision.get('model')} v{decision.get('version')}"
        run = decision.get("run_id", "-")
        lines += [
            "",
            f"## Model (decision of {when})",
            "",
            "| | |",
            "|---|---|",
            f"| registry version | [{version}]({links['version']}) |"
            if "version" in links
            else f"| registry version | {version} |",
            f"| decision | {decision.get('decision')}: {decision.get('reason', '')} |",
            f"| MLflow train run | [{run}]({links['run']}) |" if "run" in links else f"| MLflow train run | {run} |",
        ]
        ch = decision.get("challenger") or {}
        if ch:
            cp = decision.get("champion") or {}
            lines.append(
                f"| {ch.get('split')} {ch.get('metric')} base+novel | {_fmt(ch.get('all'))}"
                + (f" (champion v{decision.get('previous_champion_version')}: {_fmt(cp.get('all'))})" if cp else "")
                + " |"
            )
    lines += ["", "## Metrics", ""]
    if not metrics:
        lines.append("no metrics/*.json in the project yet")
    for name, data in metrics.items():
        stale = fresh is not None and name not in fresh
        mark = (
            " (from an earlier run: its stage did not run now)"
            if stale
            else (" (this run)" if fresh is not None else "")
        )
        lines += [f"**{name}**{mark}", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in _headline(name, data)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
