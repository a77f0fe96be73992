"""``report``: the dataset card of a converted Omnis folder, as Markdown with PNG plots people can look at."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medrov.catalog import MODALITIES, dataset_vocabulary
from medrov.data import layout
from medrov.data.splits import SPLITS
from medrov.errors import ValidationFailed

log = logging.getLogger("medrov.report")

SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def _stacked_counts(frame: pd.DataFrame, by: str, title: str, path: Path) -> None:
    plt = _plt()
    table = frame.groupby([by, "split"]).size().unstack("split").reindex(columns=list(SPLITS)).fillna(0)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(table) + 1.5))
    left = np.zeros(len(table))
    for split in SPLITS:
        ax.barh(table.index, table[split], left=left, color=SPLIT_COLOURS[split], label=split)
        left += table[split].to_numpy()
    for y, total in enumerate(left):
        ax.text(total, y, f" {int(total)}", va="center", fontsize=8)
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _class_frequency(boxes: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    counts = boxes.groupby(["class_name", "novel"]).size().reset_index(name="n").sort_values("n", ascending=False)
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(counts) + 1.5))
    colours = ["#C44E52" if novel else "#4C72B0" for novel in counts["novel"]]
    ax.barh(counts["class_name"], counts["n"], color=colours)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("boxes (log scale); red = novel class")
    ax.set_title("Class frequency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _user_vocabulary(vocab) -> list[str]:
    """Card lines naming the classes and modalities the sources file added to the catalogue (none: no lines)."""
    classes = vocab.user.get("classes", [])
    modalities = vocab.user.get("modalities", {})
    if not classes and not modalities:
        return []
    parts = [f"{c['name']} ({', '.join(c['modalities'])}; {c['split']})" for c in classes]
    added = [f"{m} (normalised: {v['normalisation']})" for m, v in modalities.items()]
    return [
        "",
        f"Added by the sources file's vocabulary block: {len(classes)} classes: {', '.join(parts) or 'none'}; "
        f"{len(modalities)} modalities: {', '.join(added) or 'none'}.",
    ]


def _ordered(modality: pd.Series) -> list[str]:
    """The modalities present, catalogue ones in catalogue order, then user modalities by name."""
    seen = set(modality.dropna().astype(str))
    return [m for m in MODALITIES if m in seen] + sorted(seen - set(MODALITIES))


def _box_sizes(boxes: pd.DataFrame, manifest: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    modality = boxes["image"].map(manifest.set_index("image")["modality"])
    side = np.sqrt(boxes["width"] * boxes["height"])
    present = _ordered(modality)
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.logspace(np.log10(max(side.min(), 1e-4)), 0, 40)
    for m in present:
        ax.hist(
            side[modality == m], bins=bins, histtype="step", linewidth=1.5, label=f"{m} ({int((modality == m).sum())})"
        )
    ax.set_xscale("log")
    ax.set_xlabel("box size: sqrt(width x height), fraction of the image")
    ax.set_ylabel("boxes")
    ax.set_title("Box size distribution per modality")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _samples(data: Path, boxes: pd.DataFrame, manifest: pd.DataFrame, path: Path, per_modality: int = 4) -> None:
    from PIL import Image

    plt = _plt()
    present = _ordered(manifest["modality"])
    fig, axes = plt.subplots(
        len(present), per_modality, figsize=(2.6 * per_modality, 2.6 * len(present)), squeeze=False
    )
    by_image = dict(tuple(boxes.groupby("image")))
    for row, m in enumerate(present):
        rows = manifest[(manifest["modality"] == m) & (manifest["n_boxes"] > 0)]
        picks = rows.sample(min(per_modality, len(rows)), random_state=0) if len(rows) else rows
        for col in range(per_modality):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(picks):
                continue
            record = picks.iloc[col]
            with Image.open(data / record["image"]) as img:
                ax.imshow(np.asarray(img.convert("RGB")))
            for _, b in by_image.get(record["image"], pd.DataFrame()).iterrows():
                ax.add_patch(
                    plt.Rectangle(
                        (b["x0"], b["y0"]),
                        b["x1"] - b["x0"],
                        b["y1"] - b["y0"],
                        fill=False,
                        edgecolor="yellow",
                        linewidth=0.8,
                    )
                )
                ax.text(b["x0"], b["y0"], b["class_name"], color="yellow", fontsize=5, va="bottom")
            ax.set_title(f"{m}: {record['source']}", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _presence(presence: pd.DataFrame, path: Path) -> None:
    from matplotlib.colors import ListedColormap

    plt = _plt()
    used = presence.loc[:, (presence != -1).any(axis=0)]
    fig, ax = plt.subplots(figsize=(max(6, 0.16 * used.shape[1] + 2), 0.35 * len(used) + 2.5))
    ax.imshow(used.to_numpy(), cmap=ListedColormap(["#DDDDDD", "#F2C14E", "#2A9D8F"]), vmin=-1, vmax=1, aspect="auto")
    ax.set_yticks(range(len(used)), used.index, fontsize=8)
    ax.set_xticks(range(used.shape[1]), used.columns, rotation=90, fontsize=6)
    ax.set_title("Presence matrix M: green 1 annotated, yellow 0 may be present (unannotated), grey -1 cannot exist")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_quarantine(path: Path) -> pd.DataFrame:
    columns = ["input", "source", "level", "action", "reason"]
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path, keep_default_na=False, dtype=str)


def _per_source(data: Path, manifest: pd.DataFrame, boxes: pd.DataFrame, quarantine: pd.DataFrame) -> pd.DataFrame:
    """One row per source, including those that gave no image (every input quarantined, or nothing found)."""
    modality = dict(zip(manifest["source"], manifest["modality"]))
    names = list(dict.fromkeys([*manifest["source"], *quarantine["source"]]))
    summary = data / "convert_summary.json"
    if summary.is_file():  # the sources of the last full run, even one with no input at all
        try:
            listed = json.loads(summary.read_text()).get("sources", {})
        except ValueError:
            log.warning("%s is not valid JSON: sources are taken from the manifest and quarantine only", summary)
            listed = {}
        names = list(dict.fromkeys([*listed, *names]))
        for name, info in listed.items():
            modality.setdefault(name, info.get("modality", "?"))
    inputs = quarantine[quarantine["level"] == "input"].groupby("source").size()
    table = pd.DataFrame({"source": sorted(names)})
    table["modality"] = table["source"].map(modality).fillna("?")
    table["converted"] = table["source"].map(manifest.groupby("source")["volume_id"].nunique()).fillna(0).astype(int)
    table["quarantined"] = table["source"].map(inputs).fillna(0).astype(int)
    table["found"] = table["converted"] + table["quarantined"]
    table["images"] = table["source"].map(manifest.groupby("source").size()).fillna(0).astype(int)
    table["boxes"] = table["source"].map(boxes.groupby("source").size()).fillna(0).astype(int)
    table["classes"] = table["source"].map(boxes.groupby("source")["class_name"].nunique()).fillna(0).astype(int)
    return table


def run(data: Path, out: Path) -> Path:
    """Write ``README.md`` and PNG plots describing the dataset into ``out``; returns the card's path."""
    data = layout.readable(data)  # a sharded dataset: its sample images come from the extracted folder
    for required in ("manifest.parquet", "boxes.parquet", "presence.csv"):
        if not (data / required).is_file():
            raise ValidationFailed(f"{required} is missing: run `medrov convert` first", data)
    manifest = pd.read_parquet(data / "manifest.parquet")
    boxes = pd.read_parquet(data / "boxes.parquet")
    presence = pd.read_csv(data / "presence.csv", index_col=0)
    out.mkdir(parents=True, exist_ok=True)
    box_split = boxes.assign(split=boxes["image"].map(manifest.set_index("image")["split"]))
    box_split["modality"] = boxes["image"].map(manifest.set_index("image")["modality"])
    _stacked_counts(manifest, "source", "Images per source and split", out / "images_per_source.png")
    _stacked_counts(manifest, "modality", "Images per modality and split", out / "images_per_modality.png")
    _stacked_counts(box_split, "source", "Boxes per source and split", out / "boxes_per_source.png")
    _class_frequency(boxes, out / "class_frequency.png")
    _box_sizes(boxes, manifest, out / "box_sizes.png")
    _samples(data, boxes, manifest, out / "samples.png")
    _presence(presence, out / "presence.png")

    vocab = dataset_vocabulary(data)
    quarantine = _read_quarantine(data / "quarantine.csv")
    per_source = _per_source(data, manifest, boxes, quarantine)
    found, failed = int(per_source["found"].sum()), int(per_source["quarantined"].sum())
    splits = manifest.groupby("split").size().reindex(list(SPLITS)).fillna(0).astype(int)
    lines = [
        "# Omnis dataset card",
        "",
        f"{len(manifest)} images from {found} inputs ({failed} quarantined) of {len(per_source)} sources "
        f"in {manifest['modality'].nunique()} modalities; {len(boxes)} boxes of {boxes['class_name'].nunique()} classes "  # noqa: E501
        f"({int(boxes['novel'].sum())} boxes of novel classes). Vocabulary: {len(vocab)} classes, {len(vocab.novel)} novel.",  # noqa: E501
        *_user_vocabulary(vocab),
        "",
        "Splits (by patient/volume): " + ", ".join(f"{s} {n}" for s, n in splits.items()),
        "",
        "Inputs found = converted + quarantined (an input is an image or a volume; a volume gives several images).",
        "",
        "| source | modality | inputs found | converted | quarantined | images | boxes | classes |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r.source} | {r.modality} | {r.found} | {r.converted} | {r.quarantined} | {r.images} | {r.boxes} "
            f"| {r.classes} |"
            for r in per_source.itertuples()
        ),
        "",
        "![images per source](images_per_source.png)",
        "![images per modality](images_per_modality.png)",
        "![boxes per source](boxes_per_source.png)",
        "![class frequency](class_frequency.png)",
        "![box sizes](box_sizes.png)",
        "![sample images with boxes](samples.png)",
        "![presence matrix](presence.png)",
    ]
    if len(quarantine):
        q = quarantine
        lines += [
            "",
            f"Quarantine: {int((q['level'] == 'input').sum())} inputs not converted, "
            f"{int((q['level'] == 'mask').sum())} mask files not used, "
            f"{int((q['level'] == 'box').sum())} boxes clipped or dropped (see quarantine.csv).",
        ]
    card = out / "README.md"
    card.write_text("\n".join(lines) + "\n")
    log.info("dataset card written to %s", card)
    return card
