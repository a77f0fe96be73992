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


def run_command(args: list[str], root: Path | None = None, what: str | None = None, timeout: float | None = None) -> str:
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
    return run_command([sys.executable, "-m", "dvc", *args], root, what=f"dvc {' '.join(args)}".strip(), timeout=timeout)


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
    """The few figures of a metrics file worth a line in a run summary."""
    picks = {
        "convert.json": ["converted", "quarantined", "total", "images", "boxes"],
        "validate.json": ["success", "passed", "failed", "warnings"],
        "train.json": ["kind", "epochs", "seconds", "metrics/mAP50(B)", "metrics/mAP50-95(B)"],
        "eval.json": [],
    }.get(name)
    if name == "eval.json":
        return [(f"{g}.{k}", data[g][k]) for g in ("all", "base", "novel") if isinstance(data.get(g), dict)
                for k in ("map50", "map50_95") if k in data[g]]
    if picks is None:
        return [(k, v) for k, v in data.items() if isinstance(v, (int, float, str, bool))][:8]
    return [(k, data[k]) for k in picks if k in data]


def summary_markdown(steps: list[dict[str, Any]], metrics: dict[str, dict[str, Any]], title: str = "medrov pipeline run") -> str:
    """A Markdown run summary: one row per step (what it did, how long), then the headline metrics."""
    lines = [f"# {title}", "", "| step | result | seconds |", "|---|---|---|"]
    for step in steps:
        lines.append(f"| {step['step']} | {step['result']} | {step.get('seconds', '')} |")
    lines += ["", "## Metrics", ""]
    if not metrics:
        lines.append("no metrics/*.json in the project yet")
    for name, data in metrics.items():
        lines += [f"**{name}**", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.5g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in _headline(name, data)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
