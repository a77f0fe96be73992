"""Keep every tool the project drives off the network: telemetry off, offline modes on.

Values are defaults (``setdefault``): an operator can still override any of them. Called explicitly by the
CLI and the test session, never at import time. :data:`OFFLINE_ENV` is the one list: the Makefile exports what
``python -m medrov.env`` prints (``KEY=VALUE`` lines).
"""

from __future__ import annotations

import os
from pathlib import Path

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


def offline_env() -> dict[str, str]:
    """The switches with their values, ``YOLO_CONFIG_DIR`` (ultralytics' settings, kept in the project) included."""
    return {**OFFLINE_ENV, "YOLO_CONFIG_DIR": str(paths.project_root() / ".ultralytics")}


def apply_offline_env() -> dict[str, str]:
    """Set the offline switches that are not already set; returns what is in force."""
    switches = offline_env()
    for key, value in switches.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in switches}


_RAY_HOME: list[str] = []


def _ray_home() -> str:
    """One private HOME per process: Ray keeps its auth token in ``$HOME/.ray/auth_token`` and caches it in the
    process, so a second instance started from the same process must find the token where the first left it."""
    import tempfile

    if not _RAY_HOME or not Path(_RAY_HOME[0]).is_dir():
        private = tempfile.mkdtemp(prefix="medrov-ray-")
        (Path(private) / "ray_bootstrap_config.yaml").write_text("{}\n")
        _RAY_HOME[:] = [private]
    return _RAY_HOME[0]


def init_local_ray(num_cpus: int, **kwargs) -> None:
    """Start a Ray instance on this machine that stays on 127.0.0.1 and asks no cloud metadata service.

    Ray probes cloud metadata addresses unless ``$HOME/ray_bootstrap_config.yaml`` exists (measured, see
    FACTS.md): while Ray starts, HOME points at a private folder holding an empty one, so the user's home is
    never written. Ray also gets its own temp dir instead of the machine-wide default. A ``RAY_ADDRESS`` in the
    environment (the team's cluster) is not used: this is the one-machine instance.
    """
    import tempfile

    import ray

    apply_offline_env()
    private = _ray_home()
    saved_home = os.environ.get("HOME")
    os.environ["HOME"] = private
    # Ray gives its GCS ~20 s to write its port file: a busy 2-core machine (a training next door) can miss that
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    # Ray starts its workers at niceness 15: on a shared machine they then yield to every other process and a
    # conversion on this Ray ran 1.5-2x slower than the process pool at normal priority (bench/scale.py)
    os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        ray.init(
            # "local" starts a new instance even when RAY_ADDRESS names a team cluster (infra/README.md)
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=tempfile.mkdtemp(prefix="t", dir=private),
            **kwargs,
        )
    finally:
        if saved_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved_home


if __name__ == "__main__":  # for the Makefile: one KEY=VALUE per line
    print("\n".join(f"{key}={value}" for key, value in offline_env().items()))
