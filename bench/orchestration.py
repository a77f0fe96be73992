"""Orchestration overhead: the pipeline through DVC and through Prefect against calling the steps directly.

Same run, same data: fresh copies of the project (shrunk demo by default, ``--demo`` for the real demo params) run
the same stages of dvc.yaml to the same outputs:

- commands: each stage's ``medrov`` command run in order as its own process, as a user types them without an
  orchestrator (the baseline of the < 10 % target: what DVC and Prefect add to the same steps);
- in-process: one Python process calls every stage's CLI function in turn; the gap to ``commands`` is the price of
  one process per step (imports, warm-up), which every stage of dvc.yaml pays with or without an orchestrator;
- dvc: ``dvc repro`` (one process per stage, dependency hashing, cache, lock file);
- prefect: the ``pipeline`` flow (``dvc repro`` as a task, no pull/push) against a Prefect server started
  beforehand on 127.0.0.1 (a deployment's server is always up, so its start is not counted).

Prints wall seconds per mode and per stage, the overheads against both baselines, the Prefect cost on top of DVC,
and the time of a no-op ``dvc repro`` (and of a no-op run through Prefect).

    python bench/orchestration.py [--demo] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "medrov",
    "flows",
    "params.yaml",
    "dvc.yaml",
    "prefect.yaml",
    "data/sources.yaml",
    ".dvc/config",
    ".dvcignore",
    ".gitignore",
]

IN_PROCESS = """
import json, os, shlex, sys, time, yaml
from medrov.cli import _setup, app
_setup()
seconds = {}
for name, stage in yaml.safe_load(open("dvc.yaml"))["stages"].items():
    args = shlex.split(stage["cmd"])
    assert args[0] == "medrov", stage["cmd"]
    print(f"stage {name}: {stage['cmd']}", flush=True)
    started = time.perf_counter()
    app(args[1:], standalone_mode=False)
    seconds[name] = time.perf_counter() - started
print("STAGES " + json.dumps(seconds), flush=True)
os._exit(0)  # every stage is done; a library thread once held interpreter exit for minutes (seen once, not timed)
"""

COMMANDS = """
import json, shlex, subprocess, sys, time, yaml
seconds = {}
for name, stage in yaml.safe_load(open("dvc.yaml"))["stages"].items():
    started = time.perf_counter()
    subprocess.run(shlex.split(stage["cmd"]), check=True)
    seconds[name] = time.perf_counter() - started
print("STAGES " + json.dumps(seconds), flush=True)
"""

PREFECT_FLOW = """
import sys
from flows.pipeline import pipeline
state = pipeline(pull=False, push=False, return_state=True)
print(state.result()["steps"] if state.is_completed() else state.message)
sys.exit(0 if state.is_completed() else 1)
"""


def copy_project(dest: Path, demo: bool) -> None:
    for rel in FILES:
        src, target = ROOT / rel, dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
            if src.is_dir()
            else shutil.copy2(src, target)
        )
    if not demo:  # the shrunk demo of the tests: minutes become seconds, the stages stay the same
        params = yaml.safe_load((dest / "params.yaml").read_text())
        params["demo"].update(ct_volumes=2, mri_volumes=2, xray_images=4, microscopy_images=4, endoscopy_images=4)
        params["text"]["encoder"] = "minilm"
        params["train"]["profiles"]["demo"].update(epochs=1, imgsz=64, batch=8, workers=0)
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(
    args: list[str],
    cwd: Path,
    env: dict[str, str],
    label: str,
    stages: dict[str, list[float]] | None = None,
    server: subprocess.Popen | None = None,
) -> tuple[float, float]:
    """Run a command; returns (wall seconds, CPU seconds of it and its children, plus what ``server`` used meanwhile).

    CPU time is the steadier figure on a shared machine: it does not grow when the machine is slow or busy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = process_cpu(server.pid) if server else 0.0
    started = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    cpu += (process_cpu(server.pid) - server_before) if server else 0.0
    if result.returncode != 0:
        sys.exit(f"{label} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    if stages is not None:
        line = next(line for line in result.stdout.splitlines() if line.startswith("STAGES "))
        for name, value in json.loads(line[len("STAGES ") :]).items():
            stages.setdefault(name, []).append(value)
    return seconds, cpu


def start_prefect(home: Path, env: dict[str, str]) -> tuple[subprocess.Popen, dict[str, str]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, env
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit("prefect server did not start in 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo", action="store_true", help="the real demo params (minutes per run) instead of the shrunk demo"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds of (commands, in-process, dvc, prefect), interleaved; medians reported",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from medrov.env import apply_offline_env

    apply_offline_env()
    work = Path(tempfile.mkdtemp(prefix="medrov-bench-orch-"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "MEDROV_SHARED_DATA": str(work / "no-shared-data"),
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MEDROV_ROOT", None)
    server, prefect_env = start_prefect(work / "prefect-home", env)
    modes = ("commands", "in-process", "dvc", "prefect")
    times: dict[str, list[float]] = {m: [] for m in (*modes, "dvc no-op", "prefect no-op")}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    stages: dict[str, dict[str, list[float]]] = {"commands": {}, "in-process": {}}

    def record(mode: str, measured: tuple[float, float]) -> None:
        times[mode].append(measured[0])
        cpu.setdefault(mode, []).append(measured[1])

    try:
        for round_ in range(args.repeats):
            # the order turns each round, so no mode always runs first (cold caches) or last (a warm, busy machine)
            for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:
                dest = work / f"{mode}-{round_}"
                copy_project(dest, args.demo)
                if mode in stages:
                    script = COMMANDS if mode == "commands" else IN_PROCESS
                    record(mode, timed([sys.executable, "-c", script], dest, env, mode, stages[mode]))
                elif mode == "dvc":
                    record(mode, timed([sys.executable, "-m", "dvc", "repro"], dest, env, mode))
                    record("dvc no-op", timed([sys.executable, "-m", "dvc", "repro"], dest, env, "dvc no-op"))
                else:  # the server's work for the flow run counts as Prefect's cost
                    record(mode, timed([sys.executable, "-c", PREFECT_FLOW], dest, prefect_env, mode, server=server))
                    record(
                        "prefect no-op",
                        timed([sys.executable, "-c", PREFECT_FLOW], dest, prefect_env, "prefect no-op", server=server),
                    )
                print(f"round {round_ + 1}: {mode} {times[mode][-1]:.1f} s wall, {cpu[mode][-1]:.1f} s CPU", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"\npipeline: {'demo' if args.demo else 'shrunk demo'} (every stage of dvc.yaml), "
        f"{args.repeats} round(s), medians; copies in {work}"
    )
    print(f"{'stage':<14} {'own process':>12} {'in-process':>11}")
    for name in stages["commands"]:
        own, inner = (
            statistics.median(stages["commands"][name]),
            statistics.median(stages["in-process"].get(name, [float("nan")])),
        )
        print(f"{name:<14} {own:10.2f} s {inner:9.2f} s")
    print(f"\n{'mode':<36} {'wall s':>7} {'vs commands':>12} {'vs in-process':>14}   {'CPU s':>6} {'vs commands':>12}")

    def row(label: str, mode: str) -> None:
        w, c = med[mode], mcpu[mode]
        print(
            f"{label:<36} {w:7.1f} {100 * (w / med['commands'] - 1):+11.1f}% {100 * (w / med['in-process'] - 1):+13.1f}%   "  # noqa: E501
            f"{c:6.1f} {100 * (c / mcpu['commands'] - 1):+11.1f}%"
        )

    row("commands (a process per step)", "commands")
    row("in-process (steps in one process)", "in-process")
    row("dvc repro", "dvc")
    row("prefect flow (dvc repro as a task)", "prefect")
    print("target: dvc and prefect < +10 % against the commands baseline (the same steps, called directly)")
    print(
        f"{'prefect on top of dvc':<36} {med['prefect'] - med['dvc']:+7.1f} s wall, {mcpu['prefect'] - mcpu['dvc']:+.1f} s CPU"  # noqa: E501
    )
    print(f"{'no-op dvc repro':<36} {med['dvc no-op']:7.2f} s (CPU {statistics.median(cpu['dvc no-op']):.2f} s)")
    print(
        f"{'no-op through prefect':<36} {med['prefect no-op']:7.2f} s (CPU {statistics.median(cpu['prefect no-op']):.2f} s)"  # noqa: E501
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
