"""``medrov`` command line: thin callers of the steps in the package.

Every command reads params.yaml through :mod:`medrov.config` (``--params`` and ``--set a.b=c`` override),
turns a :class:`MedrovError` into one readable line and a non-zero exit code, and writes metrics files for DVC.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from medrov import metric_files, paths
from medrov.cli_sources import sources_app
from medrov.errors import MedrovError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="MedROV: open-vocabulary detection for medical images."
)
app.add_typer(sources_app, name="sources")

ParamsOpt = typer.Option(None, "--params", help="params file (default: the project's params.yaml)")
SetOpt = typer.Option([], "--set", "-S", help="dotted override, e.g. data.workers=1 (repeatable)")
TrustOpt = typer.Option(
    False,
    "--trust-weights",
    help="load weights that are not plain model checkpoints (arbitrary pickles can run code: only for files you trust; "
    "also MEDROV_TRUST_WEIGHTS=1)",
)


def _trust(flag: bool) -> None:
    """``--trust-weights``: read by medrov.model.weights before any load, in this process and its children."""
    if flag:
        os.environ["MEDROV_TRUST_WEIGHTS"] = (
            "1"  # the name medrov.model.weights.TRUST_ENV (not imported: convert knows no model)
        )


def _setup(verbose: bool = False) -> None:
    from medrov.env import apply_offline_env

    apply_offline_env()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("great_expectations", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _write_metrics(path: Optional[Path], metrics: dict) -> None:
    metric_files.write(path, metrics)


@app.command()
def convert(
    sources: Optional[Path] = typer.Option(None, help="sources file (default: data.sources in params)"),
    out: Optional[Path] = typer.Option(None, help="output folder (default: data.out in params)"),
    workers: Optional[int] = typer.Option(None, min=1, help="worker processes (default: data.workers)"),
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="convert on a Ray cluster ('local' starts one here)"
    ),
    metrics: Optional[Path] = typer.Option(None, help="write the summary as JSON here (for DVC)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="hide progress bars"),
    params: Optional[Path] = ParamsOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Convert the raw sources into the Omnis dataset (images, YOLO labels, manifest, presence, quarantine)."""
    from medrov.config import load_params
    from medrov.data import convert as step

    cfg = load_params(params, set_)
    if ray_address:
        cfg.data.ray_address = ray_address
    summary = step.run(cfg.data, sources_file=sources, out_dir=out, workers=workers, progress=not no_progress)
    _write_metrics(metrics, metric_files.convert(summary))  # the full summary: <out>/convert_summary.json
    typer.echo(
        f"{step.summary_line(summary)} -> {summary['images']} images, {summary['boxes']} boxes "
        f"({summary['boxes_repaired']} boxes clipped, {summary['boxes_dropped']} dropped; "
        f"{summary['reused']} inputs unchanged and reused)"
    )
    masks = {k: summary.get(k, 0) for k in ("masks_merged", "masks_binarised", "speckles_removed", "masks_quarantined")}
    if any(masks.values()):
        typer.echo(
            f"masks: {masks['masks_merged']} merged with another of their class, {masks['masks_binarised']} binarised "
            f"({masks['speckles_removed']} speckles removed), {masks['masks_quarantined']} not used (quarantine.csv)"
        )
    if summary["quarantined"] or masks["masks_quarantined"]:
        typer.echo(f"quarantine report: {paths.resolve(out or cfg.data.out) / 'quarantine.csv'}")
    step.require_images(summary, paths.resolve(sources or cfg.data.sources))


@app.command()
def validate(
    data: Optional[Path] = typer.Option(None, help="converted dataset folder (default: validate.data in params)"),
    report: Optional[Path] = typer.Option(
        None, help="write the Data Docs site and validation.json here (default: validate.report)"
    ),
    metrics: Optional[Path] = typer.Option(None, help="write the summary as JSON here (for DVC)"),
    params: Optional[Path] = ParamsOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Run the Great Expectations gate on a converted dataset; exit 1 when a hard expectation fails."""
    from medrov.config import load_params
    from medrov.data import validate as step
    from medrov.errors import ValidationFailed

    cfg = load_params(params, set_)
    report_dir = report or (Path(cfg.validate_.report) if cfg.validate_.report else None)
    summary = step.run(cfg.validate_, data_dir=data, report_dir=report_dir)
    _write_metrics(metrics, metric_files.validate(summary))  # every check: <report>/validation.json
    for line in step.summary_lines(summary):
        typer.echo(line)
    if report_dir:
        typer.echo(f"report: {paths.resolve(report_dir) / 'index.html'}")
    if not summary["success"]:
        raise ValidationFailed(
            f"{summary['failed']} hard expectation(s) failed (listed above)", paths.resolve(data or cfg.validate_.data)
        )


@app.command()
def report(
    data: Optional[Path] = typer.Option(None, help="converted dataset folder (default: validate.data in params)"),
    out: Path = typer.Option(Path("reports/dataset"), help="where the dataset card (README.md + PNGs) goes"),
    params: Optional[Path] = ParamsOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Write the dataset card: counts per source/modality/split, class frequencies, box sizes, samples, presence."""
    from medrov.config import load_params
    from medrov.data import report as step

    cfg = load_params(params, set_)
    card = step.run(paths.resolve(data or cfg.validate_.data), paths.resolve(out))
    typer.echo(f"dataset card: {card}")


@app.command("demo-sources")
def demo_sources(
    out: Optional[Path] = typer.Option(None, help="where to write (default: demo.out in params)"),
    params: Optional[Path] = ParamsOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Write the embedded synthetic multi-source demo data (deterministic; no download)."""
    from medrov.config import load_params
    from medrov.data import demo

    cfg = load_params(params, set_)
    written = demo.generate(cfg.demo, out)
    typer.echo(f"wrote {sum(written.values())} demo inputs: " + ", ".join(f"{k} {v}" for k, v in written.items()))
    typer.echo(f"full truth (every object of every class, never converted): {demo.truth_dir(cfg.demo, out)}")


@app.command()
def train(
    profile: Optional[str] = typer.Option(None, help="training profile in params.yaml (default: train.profile)"),
    closed_set: bool = typer.Option(
        False, "--closed-set", help="train the closed-set YOLOv8 baseline on the same data and budget"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue the interrupted run of this profile from weights/last.pt"
    ),
    metrics: Optional[Path] = typer.Option(None, help="write the run summary as JSON here (for DVC)"),
    params: Optional[Path] = ParamsOpt,
    trust: bool = TrustOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Fine-tune YOLO-World on Omnis with the configured text encoder (or the closed-set baseline)."""
    _trust(trust)
    from medrov import steps
    from medrov.config import load_params

    cfg = load_params(params, set_)
    info = steps.train(cfg, profile=profile, closed_set=closed_set, resume=resume)
    _write_metrics(metrics, metric_files.train(info))  # the full summary: runs/<profile>/medrov.json
    typer.echo(f"trained {info['kind']} model: {info['weights']} ({info['epochs_done']} epochs, {info['seconds']} s)")
    if "mlflow" in info:
        typer.echo(
            f"mlflow run {info['mlflow']['run_id']} in {info['mlflow']['tracking_uri']} (model {info['mlflow']['model_uri']})"  # noqa: E501
        )


@app.command()
def evaluate(
    weights: Optional[Path] = typer.Option(None, help="model to evaluate (default: the active profile's best.pt)"),
    closed_set: bool = typer.Option(False, "--closed-set", help="default to the closed-set baseline's weights"),
    split: Optional[str] = typer.Option(None, help="train, val or test (default: evaluate.split)"),
    metrics: Optional[Path] = typer.Option(
        None, help="headline metrics JSON (default: evaluate.metrics; the whole result: evaluate.detail)"
    ),
    plots: Optional[Path] = typer.Option(
        None, help="folder for PR-curve and per-modality PNGs (default: evaluate.plots)"
    ),
    params: Optional[Path] = ParamsOpt,
    trust: bool = TrustOpt,
    set_: list[str] = SetOpt,
) -> None:
    """mAP50 and mAP50-95 for base, novel and base+novel classes, per modality and per source."""
    _trust(trust)
    from medrov import steps
    from medrov.config import load_params
    from medrov.steps.common import default_weights

    cfg = load_params(params, set_)
    w = default_weights(cfg, weights, closed_set)
    # the whole result goes to evaluate.detail, the DVC metric file gets its headline
    headline = (
        paths.resolve(metrics) if metrics else (paths.resolve(cfg.evaluate.metrics) if cfg.evaluate.metrics else None)
    )
    detail = paths.resolve(cfg.evaluate.detail) if cfg.evaluate.detail else None
    result = steps.evaluate(w, cfg, split=split, out_metrics=detail, plots_dir=paths.resolve(plots) if plots else None)
    metric_files.write(headline, metric_files.evaluate(result))
    for group in ("all", "base", "novel"):
        if group in result:
            typer.echo(
                f"{group:>6}: mAP50 {result[group]['map50']:.4f}  mAP50-95 {result[group]['map50_95']:.4f}  ({result[group]['classes']} classes)"  # noqa: E501
            )
    for mod, r in result["modality"].items():
        if "all" in r:
            typer.echo(f"  {mod:<15} mAP50 {r['all']['map50']:.4f} ({r['images']} images)")
    if result.get("mlflow_run_id"):
        typer.echo(f"mlflow evaluate run {result['mlflow_run_id']}")


@app.command()
def predict(
    path: Path = typer.Argument(..., help="image (PNG/JPG), NIfTI volume, DICOM series folder, or a folder of those"),
    prompt: list[str] = typer.Option(..., "--prompt", "-p", help="what to find, e.g. 'liver tumor' (repeatable)"),
    weights: Optional[str] = typer.Option(
        None,
        help="weights file or MLflow model URI, e.g. models:/medrov@champion (default: the registry's champion, else the latest model of the active profile)",  # noqa: E501
    ),
    out: Path = typer.Option(Path("predictions"), help="folder for one JSON and overlay PNG(s) per input"),
    conf: float = typer.Option(0.25, min=0, max=1, help="score threshold"),
    imgsz: int = typer.Option(640, min=32, help="inference size"),
    modality: str = typer.Option("auto", help="auto, ct or mri: intensity normalisation of volumes"),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for inference (default: every core)"),
    window: Optional[str] = typer.Option(
        None, "--window", help="CT window LO,HI in HU (default: the one the weights were trained with)"
    ),
    percentiles: Optional[str] = typer.Option(
        None, "--percentiles", help="MRI percentiles LO,HI (default: those the weights were trained with)"
    ),
    allow_encoder_mismatch: bool = typer.Option(
        False,
        "--allow-encoder-mismatch",
        help="embed prompts with the params' text encoder even if the weights were trained with another one",
    ),
    params: Optional[Path] = ParamsOpt,
    trust: bool = TrustOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Detect the prompted objects; volumes also get 3D boxes linked across slices and a montage of slices.

    Prompts are embedded by the text encoder the weights were trained with (another one is refused), and volumes
    are scaled with the recorded window and percentiles (--window / --percentiles override).
    """
    _trust(trust)
    from medrov import steps
    from medrov.config import load_params

    summary = steps.predict(
        load_params(params, set_),
        paths.resolve(path, Path.cwd()),
        list(prompt),
        paths.resolve(out, Path.cwd()),
        weights=weights,
        conf=conf,
        imgsz=imgsz,
        modality=modality,
        threads=threads,
        ct_window=window,
        mri_percentiles=percentiles,
        allow_encoder_mismatch=allow_encoder_mismatch,
    )
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def export(
    prompt: list[str] = typer.Option(
        [], "--prompt", "-p", help="the fixed vocabulary baked into the ONNX model (repeatable)"
    ),
    weights: Optional[Path] = typer.Option(None, help="model (default: the latest model of the active profile)"),
    out: Path = typer.Option(
        Path("exports/medrov.onnx"), help="ONNX file to write (a .json sidecar lists the classes)"
    ),
    imgsz: int = typer.Option(640, min=32, help="input size of the exported model"),
    fold: bool = typer.Option(
        False, "--fold", help="fold the prompts into the weights (closed-set speed; also writes the folded .pt)"
    ),
    params: Optional[Path] = ParamsOpt,
    trust: bool = TrustOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Export to ONNX with a fixed vocabulary (--fold: folded into the weights, at YOLOv8 cost)."""
    _trust(trust)
    from medrov.config import load_params
    from medrov.model.export import export_onnx, read_sidecar
    from medrov.steps.common import default_weights, prompter

    cfg = load_params(params, set_)
    w = default_weights(cfg, weights)
    written = export_onnx(
        w, list(prompt), prompter(cfg) if prompt else None, paths.resolve(out, Path.cwd()), imgsz=imgsz, fold=fold
    )
    meta = read_sidecar(written)
    folded = f" (folded; PyTorch form {written.with_name(meta['pytorch'])})" if meta.get("folded") else ""
    typer.echo(f"exported: {written}{folded}")


@app.command()
def promote(
    run_id: Optional[str] = typer.Option(
        None, "--run-id", help="train run whose model to promote (default: the active profile's latest)"
    ),
    split: Optional[str] = typer.Option(None, help="split of the gating metrics (default: promote.split)"),
    metrics: Optional[Path] = typer.Option(None, help="write the decision's headline as JSON here (the DVC metric)"),
    detail: Optional[Path] = typer.Option(None, help="write the whole decision (both sides' figures) as JSON here"),
    params: Optional[Path] = ParamsOpt,
    trust: bool = TrustOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Register a run's model as `challenger`; move `champion` to it only if it beats the champion on the gate."""
    _trust(trust)
    from medrov import steps
    from medrov.config import load_params

    cfg = load_params(params, set_)
    result = steps.promote(cfg, run_id=run_id, split=split)
    _write_metrics(metrics, metric_files.promote(result))
    metric_files.write(detail, result)
    ch, cp = result["challenger"], result["champion"]
    typer.echo(f"{result['model']} v{result['version']} (run {result['run_id']}): {result['decision'].upper()}")
    if ch:
        typer.echo(
            f"  challenger {ch['split']} {ch['metric']} base+novel {ch['all']:.4f}"
            + (f"  champion v{result['previous_champion_version']} {cp['all']:.4f}" if cp else "")
        )
    typer.echo(f"  reason: {result['reason']}")
    if result.get("note"):
        typer.echo(f"  note: {result['note']}")


@app.command()
def rollback(params: Optional[Path] = ParamsOpt, set_: list[str] = SetOpt) -> None:
    """Point `champion` back at the version the current champion replaced."""
    from medrov import steps
    from medrov.config import load_params

    result = steps.rollback(load_params(params, set_))
    typer.echo(
        f"{result['model']}: champion v{result['from_version']} -> v{result['to_version']} (run {result['run_id']})"
    )


@app.command()
def models(params: Optional[Path] = ParamsOpt, set_: list[str] = SetOpt) -> None:
    """List the registered versions with their aliases, gating metrics and source runs."""
    from medrov import steps, tracking
    from medrov.config import load_params

    cfg = load_params(params, set_)
    rows = steps.list_models(cfg)
    uri = tracking.tracking_uri(cfg.tracking)
    if not rows:
        typer.echo(f"no versions of {cfg.promote.model_name!r} in {uri}")
        return
    typer.echo(f"{cfg.promote.model_name} in {uri}")
    typer.echo(
        f"{'version':>7}  {'aliases':<22} {'gate':<13} {'base+novel':>10} {'base':>7} {'novel':>7}  {'decision':<9} run / modalities"  # noqa: E501
    )
    fmt = lambda v: f"{float(v):.4f}" if v not in (None, "") else "-"  # noqa: E731
    for r in rows:
        gate = f"{r['split']} {r['metric']}" if r["split"] else "-"
        mods = " ".join(f"{m}={fmt(v)}" for m, v in r["modality"].items())
        typer.echo(
            f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {gate:<13} {fmt(r['all']):>10} {fmt(r['base']):>7} "  # noqa: E501
            f"{fmt(r['novel']):>7}  {r['decision'] or '-':<9} {r['run_id']}  {mods}"
        )


@app.command()
def tune(
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster address (default: tune.ray_address; none starts a local Ray)"
    ),
    num_samples: Optional[int] = typer.Option(None, "--num-samples", min=1, help="trials (default: tune.num_samples)"),
    tracking_uri: Optional[str] = typer.Option(
        None,
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else tracking.uri, else the embedded store)",
    ),
    best: Optional[Path] = typer.Option(None, help="write the best config here (default: tune.best)"),
    metrics: Optional[Path] = typer.Option(None, help="write the sweep summary as JSON here"),
    params: Optional[Path] = ParamsOpt,
    set_: list[str] = SetOpt,
) -> None:
    """Ray Tune sweep over tune.space (default: pseudo-label thresholds T and C), ASHA on validation mAP50."""
    from medrov import tune as step
    from medrov.config import load_params

    cfg = load_params(params, set_)
    summary = step.run(
        cfg,
        address=address,
        num_samples=num_samples,
        tracking_uri=tracking_uri,
        best_file=paths.resolve(best, Path.cwd()) if best else None,
    )
    _write_metrics(metrics, summary)
    for trial in summary["trials"]:
        score = "failed" if trial["objective"] is None else f"{trial['objective']:.5f}"
        typer.echo(
            f"  {trial['trial'][:40]:<40} {score:>9} after {trial['epochs']} epoch(s)  {json.dumps(trial['config'])}"
        )
    typer.echo(f"best {summary['metric']} = {summary['best_score']:.5f}: {json.dumps(summary['best'])}")
    typer.echo(f"written to {summary['best_file']}; apply with: {summary['dvc_exp_run']}")


def main() -> None:
    """Console entry point."""
    verbose = "-v" in sys.argv or "--verbose" in sys.argv
    sys.argv = [a for a in sys.argv if a not in ("-v", "--verbose")]
    _setup(verbose)
    try:
        app(standalone_mode=False)
    except MedrovError as exc:
        typer.secho(f"error: {type(exc).__name__}: {exc}", fg="red", err=True)
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(130) from None
    except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM during a step run (which then ended KILLED)
        terminated = type(exc).__name__ == "Terminated"
        typer.secho(f"error: {'terminated (SIGTERM)' if terminated else 'interrupted'}", fg="red", err=True)
        raise SystemExit(143 if terminated else 130) from None
    except Exception as exc:  # click usage errors and friends
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        raise


if __name__ == "__main__":
    main()
