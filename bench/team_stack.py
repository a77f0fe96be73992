"""What PostgreSQL costs the team stack at start-up: a throwaway cluster (infra/postgres/local.sh start/stop), and
the MLflow and Prefect servers healthy on an empty PostgreSQL database against the same servers on SQLite (the
baseline, measured in the same run, modes alternating per round).

    python bench/team_stack.py [--repeats 3]

Everything binds 127.0.0.1. Needs Debian's postgresql package (see .ci/run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PASSWORD = "bench-only-password"
OFFLINE = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_sh(action: str, folder: Path, port: int) -> float:
    started = time.monotonic()
    env = {**os.environ, "PGPORT": str(port), "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_USER": "medrov"}
    subprocess.run(
        ["sh", str(ROOT / "infra" / "postgres" / "local.sh"), action, str(folder)],
        env=env,
        check=True,
        capture_output=True,
    )
    return time.monotonic() - started


def healthy_after(cmd: list[str], env: dict[str, str], url: str, log: Path) -> float:
    """Seconds from launch until ``url`` answers; the server is stopped afterwards."""
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **OFFLINE, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=log.parent,
        )
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:3]} exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def create_db(port: int, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="medrov", password=PASSWORD, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" OWNER medrov')
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="medrov-bench-"))
    clusters: list[Path] = []
    times: dict[str, list[float]] = {}
    port = free_port()
    try:
        for i in range(args.repeats):
            folder = Path(tempfile.mkdtemp(prefix="medrov-bench-pg-"))  # reachable by `postgres` when run as root
            clusters.append(folder)
            times.setdefault("postgres start (initdb, start, 2 databases)", []).append(local_sh("start", folder, port))
            pg = f"medrov:{PASSWORD}@127.0.0.1:{port}"
            for mode in ["sqlite", "postgres"] if i % 2 == 0 else ["postgres", "sqlite"]:
                db = f"r{i}"
                if mode == "postgres":
                    create_db(port, f"mlflow_{db}")
                    create_db(port, f"prefect_{db}")
                mlflow_store = (
                    f"postgresql+psycopg2://{pg}/mlflow_{db}"
                    if mode == "postgres"
                    else f"sqlite:///{work / f'mlflow-{db}.db'}"
                )
                prefect_store = (
                    f"postgresql+asyncpg://{pg}/prefect_{db}"
                    if mode == "postgres"
                    else f"sqlite+aiosqlite:///{work / f'prefect-{db}.db'}"
                )
                p = free_port()
                times.setdefault(f"mlflow server healthy ({mode})", []).append(
                    healthy_after(
                        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(p), "--workers", "1"],
                        {
                            "MLFLOW_BACKEND_STORE_URI": mlflow_store,
                            "MLFLOW_ARTIFACTS_DESTINATION": str(work / "artifacts"),
                        },
                        f"http://127.0.0.1:{p}/health",
                        work / f"mlflow-{mode}-{i}.log",
                    )
                )
                p = free_port()
                times.setdefault(f"prefect server healthy ({mode})", []).append(
                    healthy_after(
                        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(p), "--no-ui"],
                        {
                            "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_store,
                            "PREFECT_HOME": str(work / f"ph-{mode}-{i}"),
                        },
                        f"http://127.0.0.1:{p}/api/health",
                        work / f"prefect-{mode}-{i}.log",
                    )
                )
            times.setdefault("postgres stop", []).append(local_sh("stop", folder, port))
    finally:
        for folder in clusters:
            if (folder / "data" / "postmaster.pid").is_file():
                local_sh("stop", folder, port)
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"| step (median of {args.repeats}) | seconds | vs SQLite |")
    print("|---|---:|---:|")
    for key, value in median.items():
        base = key.replace("(postgres)", "(sqlite)")
        ratio = f"{value / median[base]:.2f}x" if base != key and base in median else ""
        print(f"| {key} | {value:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
