"""Per-source conversion: one mapped task per source (retried on its own), then one run over every source that
reuses their work and writes the dataset tables; the quarantine counts become a table artifact of the flow run."""

from __future__ import annotations

from typing import Any

from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.logging import get_run_logger


@task(retries=2, retry_delay_seconds=5, task_run_name="convert-{source}")
def convert_source(source: str, params_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """Bring one source's images, labels and states up to date in the shared output folder."""
    from medrov.config import load_params
    from medrov.data import convert

    summary = convert.run(load_params(params_file, overrides).data, progress=False, sources=[source])
    get_run_logger().info("%s: %s", source, convert.summary_line(summary))
    return summary


@task(task_run_name="convert-assemble")
def assemble(params_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """The run over every source: reuses what the per-source tasks wrote, writes manifest, boxes, quarantine..."""
    from medrov.config import load_params
    from medrov.data import convert

    summary = convert.run(load_params(params_file, overrides).data, progress=False)
    get_run_logger().info(
        "Omnis: %s (%d reused, %d converted now)",
        convert.summary_line(summary),
        summary["reused"],
        summary["reconverted"],
    )
    return summary


@flow(name="convert", log_prints=True)
def convert_sources(
    sources: list[str] | None = None, params_file: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Convert every source of ``data.sources`` (or only ``sources``) with one task per source, then assemble Omnis.

    Args:
        sources: source names to (re)convert first; default every source of the sources file.
        params_file: params file (default: the project's params.yaml).
        overrides: dotted params overrides, e.g. ``["data.workers=1"]``.
    """
    from medrov import paths
    from medrov.config import load_params
    from medrov.data import convert
    from medrov.env import apply_offline_env

    apply_offline_env()
    overrides = list(overrides or [])
    data = load_params(params_file, overrides).data
    names = sources or convert.source_names(data)
    parts = convert_source.map(names, params_file=unmapped(params_file), overrides=unmapped(overrides)).result()
    summary = assemble(params_file, overrides)
    create_table_artifact(
        key="convert-quarantine",
        table=[
            {"source": name, **{k: info[k] for k in ("modality", "inputs", "images", "boxes", "quarantined")}}
            for name, info in summary["sources"].items()
        ],
        description=f"{convert.summary_line(summary)}; quarantine report: {paths.resolve(data.out) / 'quarantine.csv'}",
    )
    summary["per_source"] = {p_name: p["sources"][p_name]["quarantined"] for p_name, p in zip(names, parts)}
    convert.require_images(summary, paths.resolve(data.sources))  # as `medrov convert`: a source giving nothing fails
    return summary


if __name__ == "__main__":
    convert_sources()
