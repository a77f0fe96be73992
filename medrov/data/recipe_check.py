"""What a recipe finds under a root before any conversion (``medrov sources check``) and the recipe table
(``medrov sources list``)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrov.catalog import load_catalog, load_vocabulary
from medrov.catalog.recipes import load_recipes
from medrov.data.sources import ResolvedSource, SourceSpec, resolve_source
from medrov.errors import ConfigError, SourceReadError


@dataclass
class CheckReport:
    """Counts and examples of what a recipe pairs under a root."""

    source: str
    root: str
    recipe: str
    items: int = 0
    inputs: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    unpaired: list[tuple[str, str]] = field(default_factory=list)
    native_labels: dict[str, int] = field(default_factory=dict)
    unknown_labels: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    scanned: int = 0
    unverified: list[str] = field(default_factory=list)
    declared: dict[str, str] = field(default_factory=dict)
    declared_file: str = ""
    declared_mismatch: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.items > 0

    def lines(self, examples: int = 5) -> list[str]:
        """The report as one-line facts."""
        out = [f"{self.source}: recipe {self.recipe} under {self.root}"]
        out.append(
            f"  items (images with their labels): {self.items} from {self.inputs} image file(s); splits {json.dumps(self.splits)}"  # noqa: E501
        )
        out.append(f"  unpaired or unusable inputs: {len(self.unpaired)}")
        out += [f"    {path}: {reason}" for path, reason in self.unpaired[:examples]]
        out.append(f"  label files scanned: {self.scanned}; native labels found {json.dumps(self.native_labels)}")
        out.append(
            f"  unknown labels (not in the recipe's map): {json.dumps(self.unknown_labels) if self.unknown_labels else 'none'}"  # noqa: E501
        )
        out += [f"    unreadable {path}: {reason}" for path, reason in self.unreadable[:examples]]
        if self.declared_file:
            out.append(f"  labels declared in {self.declared_file}: {json.dumps(self.declared)}")
            out += [f"    {problem}" for problem in self.declared_mismatch] or [
                "    every declared id is in the recipe's map"
            ]
        out += [f"  UNVERIFIED: {fact}" for fact in self.unverified]
        if not self.ok:
            out.append("  nothing matches this recipe's layout under the root")
        return out


def resolve_one(name: str, root: str | Path, **extra: Any) -> ResolvedSource:
    """A catalogue source as a user's one-line entry ``{name: NAME, root: ROOT}``."""
    root = Path(root).expanduser().resolve()
    return resolve_source(SourceSpec(name=name, root=str(root), **extra), root, load_vocabulary(), root)


def _native_labels(source: ResolvedSource, item) -> list[str]:
    """Native label ids/names an item's annotation uses, read without decoding any image."""
    recipe = source.recipe
    kind = item.spec.get("kind")
    if kind == "structures":
        return [key.split("#")[0] for key in item.spec["masks"]] if recipe.class_from else list(item.spec["masks"])
    if kind == "voc":
        try:
            return [(o.findtext("name") or "").strip() for o in ET.parse(item.inputs[1]).getroot().iter("object")]
        except ET.ParseError as exc:
            raise SourceReadError(f"malformed XML ({exc})", item.inputs[1]) from exc
    if kind == "coco":
        return [a["category"] for a in item.spec["annotations"]]
    if kind == "csv":
        return [r["label"] for r in item.spec["rows"]]
    label = item.spec["label"]
    if recipe.dims == 3:
        from medrov.data.recipe_adapter import _label_frame
        from medrov.io.frames import read_volume_frame

        array = read_volume_frame(label, _label_frame(label, item.spec.get("index"))).array
    else:
        from medrov.io.planar import read_plane

        array = read_plane(label, key=recipe.label_key or recipe.instance_key, as_mask=True).array
        if array.ndim == 3:
            array = array[..., :3].max(axis=2)
        if recipe.threshold is not None:
            array = (array > recipe.threshold).astype(np.uint8)
        elif recipe.instance_key and not recipe.label_key:
            array = (array > 0).astype(np.uint8)
    values = np.unique(np.asarray(array))
    return [str(int(v)) for v in values if v != 0]


def check_source(name: str, root: str | Path, limit: int = 0) -> CheckReport:
    """Pair the files of a catalogue source under ``root`` with its recipe and scan their label ids.

    Args:
        name: catalogue row (``AMOSF``, ``MSD_Spleen``...).
        root: where the official download was unpacked.
        limit: scan at most this many label files (0 = all).
    """
    from medrov.data.recipe_adapter import enumerate_recipe

    if name not in load_recipes():
        raise ConfigError(
            f"no catalogue recipe named {name} (known: {', '.join(sorted(load_recipes(), key=str.lower))})"
        )
    source = resolve_one(name, root)
    if source.recipe is None:
        raise SourceReadError(f"catalogue source {name} has no recipe", root)
    report = CheckReport(name, str(source.root), source.recipe.name, unverified=list(source.recipe.unverified))
    if not source.root.is_dir():
        report.unpaired.append((str(source.root), "root folder does not exist"))
        return report
    items, skipped = enumerate_recipe(source)
    report.items = len(items)
    report.inputs = len({i.inputs[0] for i in items})
    report.splits = dict(Counter(i.split or "hash" for i in items))
    report.unpaired = [(s.input, s.reason) for s in skipped]
    native: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    seen_labels = set()
    for item in items:
        key = item.inputs[1] if len(item.inputs) > 1 else item.inputs[0]
        if key in seen_labels and item.spec.get("kind") not in ("coco", "csv"):
            continue  # one 4D label file serves several frames/channels
        if limit and report.scanned >= limit:
            break
        seen_labels.add(key)
        try:
            labels = _native_labels(source, item)
        except SourceReadError as exc:
            report.unreadable.append((exc.path or key, exc.reason))
            continue
        report.scanned += 1
        for label in labels:
            native[label] += 1
            if label not in source.class_map:
                unknown[label] += 1
    _compare_declared(source, report)
    report.native_labels = dict(sorted(native.items(), key=lambda kv: _natural(kv[0])))
    report.unknown_labels = dict(unknown)
    return report


def _compare_declared(source: ResolvedSource, report: CheckReport) -> None:
    """Compare an MSD-style ``dataset.json`` ``labels`` block (MSD, AMOS, BHSD) with the recipe's id map."""
    from medrov.data.recipe_adapter import _glob

    files = [f for f in _glob(source.root, "**/dataset.json") if not f.name.startswith("._")]
    if not files or source.recipe.annotation != "label_map":
        return
    try:
        declared = json.loads(files[0].read_text()).get("labels") or {}
    except (OSError, ValueError, AttributeError) as exc:
        report.unreadable.append((str(files[0]), f"cannot read dataset.json ({exc})"))
        return
    if not isinstance(declared, dict):
        return
    # MSD writes {"0": "background", "1": "spleen"}; nnU-Net v2 files write {"background": 0, "spleen": 1}
    if declared and all(isinstance(v, int) for v in declared.values()):
        declared = {str(v): k for k, v in declared.items()}
    report.declared_file = str(files[0])
    report.declared = {str(k): str(v) for k, v in declared.items()}
    for native, name in report.declared.items():
        if native != "0" and native not in source.class_map:
            report.declared_mismatch.append(f"declared id {native} ({name}) is not in the recipe's map")
    for native in source.class_map:
        if native.isdigit() and native not in report.declared:
            report.declared_mismatch.append(f"recipe maps id {native}, which the dataset.json does not declare")


def _natural(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def recipe_table() -> list[dict[str, Any]]:
    """One row per catalogue source: its recipe, layout, formats, classes mapped and UNVERIFIED facts."""
    catalog = load_catalog()
    recipes = load_recipes()
    rows = []
    for name in sorted(catalog, key=str.lower):
        recipe = recipes.get(name)
        ones = sorted(k for k, v in catalog[name].presence.items() if v == 1)
        if recipe is None:
            rows.append(
                {
                    "source": name,
                    "status": "no recipe",
                    "recipe": "",
                    "layout": "",
                    "annotation": "",
                    "formats": "",
                    "classes": f"0/{len(ones)}",
                    "unverified": 0,
                    "modality": catalog[name].modality,
                }
            )
            continue
        vocab = load_vocabulary()
        mapped = {vocab.lookup(t).name for t in recipe.labels.values() if t and vocab.lookup(t)}
        formats = sorted(
            {_suffix(p.images) for p in recipe.patterns}
            | {_suffix(p.label or p.masks or p.image or "") for p in recipe.patterns} - {""}
        )
        rows.append(
            {
                "source": name,
                "status": "fixture-tested" + (", real download checked" if recipe.real_data_checked else ""),
                "recipe": recipe.name,
                "layout": recipe.layout or "own",
                "annotation": recipe.annotation,
                "formats": " ".join(formats),
                "classes": f"{len(mapped & set(ones))}/{len(ones)}",
                "unverified": len(recipe.unverified),
                "modality": recipe.modality or catalog[name].modality,
            }
        )
    return rows


def _suffix(pattern: str) -> str:
    name = pattern.rsplit("/", 1)[-1].lower()
    for suffix in (
        ".nii.gz",
        ".seg.nrrd",
        ".nrrd",
        ".mhd",
        ".mha",
        ".png",
        ".jpg",
        ".tif",
        ".gif",
        ".mat",
        ".xml",
        ".json",
        ".csv",
    ):
        if name.endswith(suffix):
            return suffix.lstrip(".")
    return ""


TABLE_START = "<!-- recipes-table:start (generated by medrov.data.recipe_check.recipe_markdown) -->"
TABLE_END = "<!-- recipes-table:end -->"


def recipe_markdown() -> str:
    """The README table of every catalogue source and its recipe status."""
    recipes = load_recipes()
    lines = [
        TABLE_START,
        "| source (row) | modality | recipe (layout) | annotation | formats | classes mapped | status | UNVERIFIED facts |",  # noqa: E501
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in recipe_table():
        # markdown: asterisks of globs would start emphasis
        facts = "; ".join(recipes[r["source"]].unverified).replace("*", "\\*") if r["recipe"] else ""
        lines.append(
            f"| {r['source']} | {r['modality']} | {r['recipe']} ({r['layout']}) | {r['annotation']} | {r['formats']} | "
            f"{r['classes']} | {r['status']} | {facts.replace('|', '/') or '-'} |"
        )
    lines.append(TABLE_END)
    return "\n".join(lines)
