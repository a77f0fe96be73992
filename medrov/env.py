"""Keep every tool the project drives off the network: telemetry off, offline modes on.

Values are defaults (``setdefault``): an operator can still override any of them. Called explicitly by the
CLI and the test session, never at import time.
"""

from __future__ import annotations

import os

from medrov import paths

OFFLINE_ENV: dict[str, str] = {
    # ultralytics: no online checks, settings kept in the project (see FACTS.md)
    "YOLO_OFFLINE": "1",
    # mlflow: no telemetry look-up; the string "true" is what it checks
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    # prefect: no analytics; a busy 2-core box needs longer for the ephemeral server
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # dvc: no analytics daemon
    "DVC_NO_ANALYTICS": "1",
    # ray: no usage stats, reports (if any) to a dead loopback port, no cloud metadata probes
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # great expectations and huggingface
    "GX_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
}


def apply_offline_env() -> dict[str, str]:
    """Set the offline switches that are not already set; returns what is in force."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(paths.project_root() / ".ultralytics"))
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in (*OFFLINE_ENV, "YOLO_CONFIG_DIR")}
