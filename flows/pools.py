"""Create the work pools that ``prefect.yaml`` names, so ``prefect --no-prompt deploy --all`` succeeds on one machine.

``python -m flows.pools`` (against ``PREFECT_API_URL``) makes every pool the deployments name that the server does
not have yet, as a process pool built from the process worker's own job template: ``prefect work-pool create``
would fetch a worker catalogue from GitHub first. An existing pool is left as it is. A pool for GPU deployments
(``medrov-gpu``) is made too: it only queues their runs until a worker on a GPU machine polls it
(``prefect worker start --pool medrov-gpu`` there); until then nothing runs, and this says so in one line.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

PREFECT_YAML = Path(__file__).resolve().parent.parent / "prefect.yaml"


def pools_named(prefect_yaml: str | Path = PREFECT_YAML) -> dict[str, list[dict[str, Any]]]:
    """Work pool name -> the deployments of ``prefect_yaml`` that run on it (YAML anchors resolved)."""
    spec = yaml.safe_load(Path(prefect_yaml).read_text()) or {}
    pools: dict[str, list[dict[str, Any]]] = {}
    for deployment in spec.get("deployments") or []:
        name = (deployment.get("work_pool") or {}).get("name")
        if name:
            pools.setdefault(name, []).append(deployment)
    return pools


async def _ensure(pools: dict[str, list[str]]) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    out = []
    async with get_client() as client:
        for name, deployments in pools.items():
            record = {
                "pool": name,
                "deployments": [d["name"] for d in deployments],
                "gpu": any("gpu" in (d.get("tags") or []) for d in deployments),
            }
            try:
                await client.read_work_pool(name)
                out.append({**record, "created": False})
                continue
            except ObjectNotFound:
                pass
            await client.create_work_pool(
                WorkPoolCreate(
                    name=name, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            out.append({**record, "created": True})
    return out


def ensure_pools(prefect_yaml: str | Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """Create the missing pools of ``prefect_yaml``; returns one record per pool (``created`` False: it existed)."""
    return asyncio.run(_ensure(pools_named(prefect_yaml)))


def main() -> int:
    from prefect.settings import PREFECT_API_URL

    from medrov.env import apply_offline_env

    apply_offline_env()
    if not PREFECT_API_URL.value():
        print(
            "PREFECT_API_URL is not set: start `prefect server start` and export PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 1
    # like `prefect deploy`, the prefect.yaml of the folder it runs in, else the project's
    local = Path("prefect.yaml")
    for pool in ensure_pools(local if local.is_file() else PREFECT_YAML):
        what = "created (process)" if pool["created"] else "exists"
        print(
            f"work pool {pool['pool']}: {what}; deployments {', '.join(pool['deployments'])}"
            + ("; its runs wait for a worker on a GPU machine" if pool["gpu"] else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
