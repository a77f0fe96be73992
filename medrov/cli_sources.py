"""``medrov sources``: the catalogue's recipes, and what a recipe finds under a download before converting."""

from __future__ import annotations

from pathlib import Path

import typer

sources_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Catalogue sources and their download recipes."
)


@sources_app.command("list")
def list_sources(
    markdown: bool = typer.Option(False, "--markdown", help="print the README status table instead"),
) -> None:
    """Every catalogue source (presence-matrix row) with its recipe status."""
    from medrov.data.recipe_check import recipe_markdown, recipe_table

    if markdown:
        typer.echo(recipe_markdown())
        return
    rows = recipe_table()
    typer.echo(
        f"{'source':<18} {'modality':<14} {'recipe':<16} {'layout':<15} {'annotation':<11} {'formats':<22} {'classes':>7} {'unverified':>10}  status"  # noqa: E501
    )
    for r in rows:
        typer.echo(
            f"{r['source']:<18} {r['modality']:<14} {r['recipe']:<16} {r['layout']:<15} {r['annotation']:<11} {r['formats']:<22} {r['classes']:>7} {r['unverified']:>10}  {r['status']}"  # noqa: E501
        )
    with_recipe = sum(1 for r in rows if r["recipe"])
    typer.echo(f"{with_recipe} of {len(rows)} catalogue sources have a recipe")


@sources_app.command("check")
def check(
    name: str = typer.Argument(..., help="catalogue source (presence-matrix row), e.g. AMOSF"),
    root: Path = typer.Argument(..., help="folder where the official download was unpacked"),
    limit: int = typer.Option(0, min=0, help="scan at most this many label files (0 = all)"),
) -> None:
    """Images, labels, unpaired files and unknown label ids the recipe finds under ROOT (exit 1 when nothing matches)."""  # noqa: E501
    from medrov.data.recipe_check import check_source

    report = check_source(name, root, limit)
    for line in report.lines():
        typer.echo(line)
    if not report.ok:
        raise SystemExit(1)  # main() runs typer with standalone_mode=False, which swallows typer.Exit codes
