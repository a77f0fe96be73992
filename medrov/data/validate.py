"""``validate``: the Great Expectations gate between conversion and training.

The converted tables (``manifest.parquet``, ``boxes.parquet``) and tables derived from the files themselves
(label lines, files on disk, image headers and pixels, split groups, presence look-ups) are validated by GX
suites. Each check has a severity: ``error`` fails the gate (non-zero exit), ``warning`` is reported only.
Every failed check becomes one line: which table and column, how many rows, three examples.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medrov import paths
from medrov.catalog import Vocabulary, dataset_vocabulary
from medrov.config import ValidateParams
from medrov.data import layout
from medrov.data.datadocs import make_offline
from medrov.data.splits import SPLITS
from medrov.errors import ValidationFailed

log = logging.getLogger("medrov.validate")


@dataclass
class Check:
    """One expectation on one table, with the sentence a person reads when it fails."""

    table: str
    column: str
    expectation: str
    kwargs: dict[str, Any]
    severity: str
    description: str
    index_column: str | None = None


@dataclass
class CheckResult:
    table: str
    column: str
    expectation: str
    severity: str
    description: str
    success: bool
    unexpected_count: int
    element_count: int
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        status = "ok" if self.success else ("FAIL" if self.severity == "error" else "WARN")
        head = f"{status} {self.table}.{self.column}: {self.description}"
        if self.success:
            return head
        examples = "; ".join(self.examples[:3])
        return f"{head}: {self.unexpected_count} of {self.element_count} rows" + (
            f" (e.g. {examples})" if examples else ""
        )


# ---------------------------------------------------------------- derived tables


def _problems(mask: pd.Series, describe) -> pd.Series:
    """A column that is null where a row is fine and says what is wrong where it is not.

    ``describe(index)`` builds the sentences for the failing rows only (cheap when almost all rows pass);
    GX's ``expect_column_values_to_be_null`` then reports them as readable examples.
    """
    out = pd.Series(None, index=mask.index, dtype=object)
    bad = mask.fillna(False).to_numpy(dtype=bool)
    if bad.any():
        index = mask.index[bad]
        out.loc[index] = np.asarray(describe(index), dtype=object)
    return out


def _hash(values: pd.Series) -> np.ndarray:
    """64-bit hashes of strings: membership tests on millions of paths without slow string sets."""
    return pd.util.hash_array(values.to_numpy(dtype=object))


def _inspect(data: Path, rel: str, decode: bool) -> tuple[bool, str | None, int, int, bool]:
    """(exists, decode error, width, height, constant) of one image; ``decode`` reads every pixel."""
    from PIL import Image

    path = data / rel
    if not path.is_file():
        return False, None, -1, -1, False
    try:
        with Image.open(path) as img:
            width, height = img.size
            constant = False
            if decode:
                extrema = img.getextrema()  # decodes every pixel: also proves the file is not truncated
                bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
                constant = all(lo == hi for lo, hi in bands)
        return True, None, width, height, constant
    except Exception as exc:  # any decoder error means the training loader would fail too
        return True, f"{type(exc).__name__}: {exc}", -1, -1, False


def _inspect_chunk(data: Path, chunk: list[tuple[str, bool]]) -> list[tuple[bool, str | None, int, int, bool]]:
    return [_inspect(data, rel, decode) for rel, decode in chunk]


def pixel_rows(images: pd.Series, sample: float) -> np.ndarray:
    """Which rows get their pixels decoded: all, or a fixed sample (the lowest path hashes, so it is the same
    images every run and spreads over every source). ``sample`` <= 1 is a fraction, > 1 a count."""
    n = len(images)
    k = n if sample >= n or sample == 1 else int(round(sample * n)) if sample < 1 else int(sample)
    chosen = np.zeros(n, dtype=bool)
    if k >= n:
        chosen[:] = True
    elif k > 0:
        chosen[np.argsort(_hash(images), kind="stable")[:k]] = True
    return chosen


def _image_facts(data: Path, images: list[str], decode: np.ndarray, workers: int) -> pd.DataFrame:
    """Header facts of every image, and pixel facts of the ``decode`` rows, on ``workers`` processes."""
    jobs = list(zip(images, decode.tolist()))
    if workers <= 1 or len(jobs) <= 1:
        # threads overlap the file reads; Pillow's decoder releases the GIL for part of the work
        with ThreadPoolExecutor(max_workers=4) as pool:
            rows = list(pool.map(lambda job: _inspect(data, *job), jobs, chunksize=64))
    else:
        from concurrent.futures import ProcessPoolExecutor
        from functools import partial

        # chunks of a few hundred: per-task pickling stays small next to decoding
        size = max(64, min(1024, len(jobs) // (workers * 8)))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = [row for part in pool.map(partial(_inspect_chunk, data), chunks) for row in part]
    return pd.DataFrame(rows, columns=["exists", "error", "file_width", "file_height", "constant"])


def _label_lines(data: Path, labels: pd.Series, images: pd.Series) -> tuple[pd.DataFrame, pd.Series]:
    """Every non-empty line of every label file, parsed; plus which label files are missing."""
    label_col, image_col, number_col, text_col, missing = [], [], [], [], []
    for label, image in zip(labels, images):
        try:
            # undecodable bytes become U+FFFD, so the line fails to parse and is reported, not a crash
            text = (data / label).read_text(errors="replace")
        except OSError:
            missing.append(True)
            continue
        missing.append(False)
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                label_col.append(label)
                image_col.append(image)
                number_col.append(line_no)
                text_col.append(line)
    lines = pd.DataFrame({"label": label_col, "image": image_col, "line_no": number_col, "text": text_col})
    fields = _split_fields(text_col)
    n_fields = fields.notna().sum(axis=1).to_numpy()
    numeric = pd.DataFrame(index=lines.index)
    for i, name in enumerate(("class_id", "x_center", "y_center", "width", "height")):
        column = fields[i] if i in fields.columns else pd.Series(np.nan, index=lines.index)
        lines[name] = (
            (column if column.dtype.kind == "f" else pd.to_numeric(column, errors="coerce")).astype(float).to_numpy()
        )
        numeric[name] = lines[name]
    bad = pd.Series(n_fields != 5, index=lines.index) | numeric.isna().any(axis=1) | (numeric["class_id"] % 1 != 0)
    lines["parse_error"] = _problems(
        bad,
        lambda i: (
            lines.loc[i, "label"]
            + ":"
            + lines.loc[i, "line_no"].astype(str)
            + " "
            + lines.loc[i, "text"].str.slice(0, 60)
        ),
    )
    return lines, pd.Series(missing, index=labels.index)


_MAX_FIELDS = 16


def _split_fields(text_lines: list[str]) -> pd.DataFrame:
    """Whitespace-separated fields of each line, by pandas' C parser (one call for all files).

    Columns are floats where every value parses; lines with more than ``_MAX_FIELDS`` fields fall back to a
    Python split (they are malformed anyway, and rare).
    """
    import io

    if not text_lines:
        return pd.DataFrame(index=pd.RangeIndex(0))
    try:
        fields = pd.read_csv(
            io.StringIO("\n".join(text_lines)),
            sep=r"\s+",
            header=None,
            names=range(_MAX_FIELDS),
            skip_blank_lines=False,
            engine="c",
        )
        if len(fields) == len(text_lines):
            return fields
    except (pd.errors.ParserError, ValueError):
        pass
    rows = [line.split() for line in text_lines]
    return pd.DataFrame(rows).reindex(columns=range(max(_MAX_FIELDS, max(map(len, rows)))))


def _box_keys(frame: pd.DataFrame) -> np.ndarray:
    """One 64-bit key per (image, class, coordinates to the 6 decimals of the label file, occurrence).

    Equal keys mean the same box; the occurrence number makes multisets compare row by row (two identical
    boxes need two label lines).
    """
    key = pd.DataFrame({"image": _hash(frame["image"]), "class_id": frame["class_id"].fillna(-1).astype(np.int64)})
    for name in ("x_center", "y_center", "width", "height"):
        key[name] = np.rint(frame[name].fillna(-1).to_numpy(dtype=float) * 1e6).astype(np.int64)
    base = pd.util.hash_pandas_object(key, index=False).to_numpy()
    occurrence = pd.Series(base).groupby(base).cumcount().to_numpy()
    return pd.util.hash_pandas_object(pd.DataFrame({"k": base, "n": occurrence}), index=False).to_numpy()


def build_tables(data: Path, vocab: Vocabulary, params: ValidateParams) -> dict[str, pd.DataFrame]:
    """Load the dataset tables and derive the ones the checks need."""
    manifest = pd.read_parquet(data / "manifest.parquet")
    boxes = pd.read_parquet(data / "boxes.parquet")
    presence = pd.read_csv(data / "presence.csv", index_col=0)

    decode = (
        pixel_rows(manifest["image"], params.pixel_sample) if params.check_pixels else np.zeros(len(manifest), bool)
    )
    facts = _image_facts(data, manifest["image"].tolist(), decode, params.workers)
    log.info("validate: %d of %d images decoded for the pixel checks", int(decode.sum()), len(manifest))
    manifest.attrs["pixels_decoded"] = int(decode.sum())
    facts.index = manifest.index
    manifest["image_missing"] = _problems(~facts["exists"], lambda i: manifest.loc[i, "image"])
    manifest["unreadable"] = _problems(
        facts["error"].notna(), lambda i: manifest.loc[i, "image"] + ": " + facts.loc[i, "error"]
    )
    size_bad = (
        facts["exists"]
        & facts["error"].isna()
        & ((facts["file_width"] != manifest["width"]) | (facts["file_height"] != manifest["height"]))
    )
    manifest["size_mismatch"] = _problems(
        size_bad,
        lambda i: (
            manifest.loc[i, "image"]
            + ": manifest "
            + manifest.loc[i, "width"].astype(str)
            + "x"
            + manifest.loc[i, "height"].astype(str)
            + ", file "
            + facts.loc[i, "file_width"].astype(str)
            + "x"
            + facts.loc[i, "file_height"].astype(str)
        ),
    )
    manifest["constant_image"] = _problems(facts["constant"], lambda i: manifest.loc[i, "image"])

    lines, label_missing = _label_lines(data, manifest["label"], manifest["image"])
    manifest["label_missing"] = _problems(label_missing, lambda i: manifest.loc[i, "label"])
    actual = manifest["image"].map(boxes.groupby("image").size()).fillna(0).astype(int)
    manifest["n_boxes_mismatch"] = _problems(
        actual != manifest["n_boxes"],
        lambda i: (
            manifest.loc[i, "image"]
            + ": n_boxes "
            + manifest.loc[i, "n_boxes"].astype(str)
            + ", boxes table "
            + actual[i].astype(str)
        ),
    )

    listed = np.concatenate([_hash(manifest["image"]), _hash(manifest["label"])])
    # ultralytics writes labels/<source>.cache (its label index) next to our labels: not an orphan
    disk = [
        p.relative_to(data).as_posix()
        for folder in ("images", "labels")
        if (data / folder).is_dir()
        for p in (data / folder).rglob("*")
        if p.is_file() and not (folder == "labels" and p.suffix == ".cache")
    ]
    files = pd.DataFrame({"path": pd.Series(disk, dtype=object)})
    files["orphan"] = _problems(
        pd.Series(~np.isin(_hash(files["path"]), listed), index=files.index), lambda i: files.loc[i, "path"]
    )

    names = pd.Series({c.id: c.name for c in vocab.classes})
    boxes["x_min"] = boxes["x_center"] - boxes["width"] / 2
    boxes["x_max"] = boxes["x_center"] + boxes["width"] / 2
    boxes["y_min"] = boxes["y_center"] - boxes["height"] / 2
    boxes["y_max"] = boxes["y_center"] + boxes["height"] / 2
    expected_name = boxes["class_id"].map(names)
    boxes["name_mismatch"] = _problems(
        expected_name.notna() & (expected_name != boxes["class_name"]),
        lambda i: (
            boxes.loc[i, "image"]
            + ": id "
            + boxes.loc[i, "class_id"].astype(str)
            + " is "
            + expected_name[i]
            + ", not "
            + boxes.loc[i, "class_name"]
        ),
    )
    boxes["image_not_in_manifest"] = _problems(
        pd.Series(~np.isin(_hash(boxes["image"]), _hash(manifest["image"])), index=boxes.index),
        lambda i: boxes.loc[i, "image"],
    )
    boxes["source_class"] = boxes["source"] + "/" + boxes["class_name"]
    presence_long = presence.stack()
    presence_long.index = [f"{src}/{cls}" for src, cls in presence_long.index]
    presence_value = boxes["source_class"].map(presence_long).astype(float)
    boxes["presence_missing"] = _problems(presence_value.isna(), lambda i: boxes.loc[i, "source_class"])
    # a missing entry is reported by presence_missing; the M checks judge the entries that exist
    boxes["presence"] = presence_value.fillna(1.0)

    parsed = lines[lines["parse_error"].isna()]
    box_keys = _box_keys(boxes)
    line_keys = _box_keys(parsed)
    boxes["missing_from_label_file"] = _problems(
        pd.Series(~np.isin(box_keys, line_keys), index=boxes.index),
        lambda i: boxes.loc[i, "image"] + " " + boxes.loc[i, "class_name"],
    )
    lines["missing_from_boxes_table"] = _problems(
        pd.Series(~np.isin(line_keys, box_keys), index=parsed.index).reindex(lines.index, fill_value=False),
        lambda i: lines.loc[i, "label"] + ":" + lines.loc[i, "line_no"].astype(str),
    )

    groups = []
    for column in ("patient_id", "volume_id"):
        per = manifest.groupby(column)["split"].agg(lambda s: ",".join(sorted(set(s))))
        groups.append(pd.DataFrame({"kind": column, "group": per.index, "splits": per.values}))
    group_table = pd.concat(groups, ignore_index=True)
    group_table["leak"] = _problems(
        group_table["splits"].str.contains(","),
        lambda i: group_table.loc[i, "group"] + " in " + group_table.loc[i, "splits"],
    )

    share = boxes.groupby(["source", "class_name"]).size() / boxes.groupby("source").size()
    share_table = share.rename("share").reset_index()
    share_table["source_class"] = share_table["source"] + "/" + share_table["class_name"]
    n_classes = share_table.groupby("source")["class_name"].transform("size")
    bounds = {src: params.class_share_per_source.get(src, params.class_share) for src in share_table["source"].unique()}
    low = share_table["source"].map(lambda src: bounds[src][0]).astype(float)
    high = share_table["source"].map(lambda src: bounds[src][1]).astype(float)
    share_table["out_of_bounds"] = _problems(
        # a source with a single class has share 1 by construction: nothing to judge
        (n_classes > 1) & ((share_table["share"] < low) | (share_table["share"] > high)),
        lambda i: (
            share_table.loc[i, "source_class"]
            + " share "
            + share_table.loc[i, "share"].round(3).astype(str)
            + " not in ["
            + low[i].astype(str)
            + ", "
            + high[i].astype(str)
            + "]"
        ),
    )

    area = boxes["width"] * boxes["height"]
    log_area = np.log(np.clip(area, 1e-12, None))
    modality = boxes["source"].map(manifest.drop_duplicates("source").set_index("source")["modality"])
    median = log_area.groupby(modality).transform("median")
    mad = (log_area - median).abs().groupby(modality).transform("median")
    # the scale is floored at 0.5 (natural log): sources of one modality often have very uniform sizes, and
    # a tight MAD would flag every class that is merely larger than the most common one
    robust_z = ((log_area - median).abs() / (1.4826 * mad).clip(lower=0.5)).fillna(0.0)
    boxes["size_outlier"] = _problems(
        robust_z > params.box_size_mad,
        lambda i: (
            boxes.loc[i, "image"]
            + " "
            + boxes.loc[i, "class_name"]
            + " area "
            + area[i].map(lambda a: f"{a:.2g}")
            + " ("
            + robust_z[i].round(1).astype(str)
            + " MADs from the "
            + modality[i].fillna("?")
            + " median)"
        ),
    )
    return {
        "manifest": manifest,
        "boxes": boxes,
        "label_lines": lines,
        "files": files,
        "split_groups": group_table,
        "class_share": share_table,
    }


# ---------------------------------------------------------------- checks


def checks(vocab: Vocabulary, params: ValidateParams) -> list[Check]:
    tol = params.coord_tolerance
    E, W = "error", "warning"
    c: list[Check] = []

    def null(table: str, column: str, description: str, severity: str = E) -> None:
        c.append(Check(table, column, "expect_column_values_to_be_null", {}, severity, description))

    # manifest and the image files
    c.append(Check("manifest", "image", "expect_column_values_to_be_unique", {}, E, "one manifest row per image"))
    c.append(
        Check(
            "manifest",
            "split",
            "expect_column_values_to_be_in_set",
            {"value_set": list(SPLITS)},
            E,
            "split is train, val or test",
            "image",
        )
    )
    c.append(
        Check(
            "manifest",
            "modality",
            "expect_column_values_to_be_in_set",
            {"value_set": list(vocab.modalities)},
            E,
            "modality is known",
            "image",
        )
    )
    c.append(
        Check("manifest", "width", "expect_column_values_to_be_between", {"min_value": 1}, E, "width > 0", "image")
    )
    c.append(
        Check("manifest", "height", "expect_column_values_to_be_between", {"min_value": 1}, E, "height > 0", "image")
    )
    null("manifest", "image_missing", "every manifest row has its image file")
    null("manifest", "label_missing", "every manifest row has its label file")
    null("manifest", "unreadable", "every image decodes")
    null("manifest", "size_mismatch", "image size matches the manifest")
    null("manifest", "constant_image", "no image is constant (blank)")
    null("manifest", "n_boxes_mismatch", "n_boxes matches the boxes table")
    null("files", "orphan", "every image and label file on disk has a manifest row")
    # boxes
    for column in ("x_center", "y_center"):
        c.append(
            Check(
                "boxes",
                column,
                "expect_column_values_to_be_between",
                {"min_value": 0, "max_value": 1},
                E,
                "normalised coordinate in [0, 1]",
                "image",
            )
        )
    for column in ("width", "height"):
        c.append(
            Check(
                "boxes",
                column,
                "expect_column_values_to_be_between",
                {"min_value": 0, "max_value": 1, "strict_min": True},
                E,
                "normalised size in (0, 1]",
                "image",
            )
        )
    for column in ("x_min", "y_min"):
        c.append(
            Check(
                "boxes",
                column,
                "expect_column_values_to_be_between",
                {"min_value": -tol},
                E,
                "box inside the image",
                "image",
            )
        )
    for column in ("x_max", "y_max"):
        c.append(
            Check(
                "boxes",
                column,
                "expect_column_values_to_be_between",
                {"max_value": 1 + tol},
                E,
                "box inside the image",
                "image",
            )
        )
    c.append(
        Check(
            "boxes",
            "class_id",
            "expect_column_values_to_be_in_set",
            {"value_set": [cl.id for cl in vocab.classes]},
            E,
            "class id in the vocabulary",
            "image",
        )
    )
    null("boxes", "name_mismatch", "class name matches the vocabulary entry of its id")
    null("boxes", "image_not_in_manifest", "every box belongs to a manifest image")
    c.append(
        Check(
            "boxes",
            "image,class_id,x_center,y_center,width,height",
            "expect_compound_columns_to_be_unique",
            {},
            E,
            "no duplicate (image, class, box) rows",
            "image",
        )
    )
    null("boxes", "presence_missing", "every (source, class) with a box has an entry in presence.csv")
    c.append(
        Check(
            "boxes",
            "presence",
            "expect_column_values_to_be_in_set",
            {"value_set": [1]},
            E,
            "every (source, class) with a box is annotated there (M = 1)",
            "source_class",
        )
    )
    c.append(
        Check(
            "boxes",
            "presence",
            "expect_column_values_to_not_be_in_set",
            {"value_set": [-1]},
            E,
            "no class appears in a source where it cannot exist (M = -1)",
            "source_class",
        )
    )
    null("boxes", "missing_from_label_file", "every box is in its label file")
    # label files (what training actually reads)
    null("label_lines", "parse_error", "every label line is five numbers")
    c.append(
        Check(
            "label_lines",
            "class_id",
            "expect_column_values_to_be_in_set",
            {"value_set": [cl.id for cl in vocab.classes]},
            E,
            "label class id in the vocabulary",
            "label",
        )
    )
    for column in ("x_center", "y_center"):
        c.append(
            Check(
                "label_lines",
                column,
                "expect_column_values_to_be_between",
                {"min_value": 0, "max_value": 1},
                E,
                "label coordinate in [0, 1]",
                "label",
            )
        )
    for column in ("width", "height"):
        c.append(
            Check(
                "label_lines",
                column,
                "expect_column_values_to_be_between",
                {"min_value": 0, "max_value": 1, "strict_min": True},
                E,
                "label size in (0, 1]",
                "label",
            )
        )
    null("label_lines", "missing_from_boxes_table", "every label line is in the boxes table")
    # sources and splits
    null("split_groups", "leak", "no patient or volume in two splits")
    # distribution checks: warnings
    null(
        "class_share",
        "out_of_bounds",
        "per-source class share within validate.class_share (or class_share_per_source)",
        W,
    )
    null(
        "boxes",
        "size_outlier",
        f"box area within {params.box_size_mad:g} MADs of its modality's median (log scale; validate.box_size_mad)",
        W,
    )
    return c


def _gx_expectation(check: Check):
    import great_expectations.expectations as gxe

    name = "".join(part.title() for part in check.expectation.split("_"))
    cls = getattr(gxe, name)
    meta = {"severity": check.severity, "description": check.description}
    if check.expectation == "expect_compound_columns_to_be_unique":
        return cls(column_list=check.column.split(","), meta=meta)
    return cls(column=check.column, meta=meta, **check.kwargs)


def _examples(result: dict[str, Any], check: Check) -> list[str]:
    values = result.get("partial_unexpected_list") or []
    index = result.get("partial_unexpected_index_list") or []
    out = []
    for i, value in enumerate(values[:3]):
        where = (
            index[i].get(check.index_column)
            if i < len(index) and isinstance(index[i], dict) and check.index_column
            else None
        )
        out.append(f"{where}: {value}" if where is not None and str(where) not in str(value) else str(value))
    return out


def _run_gx(tables: dict[str, pd.DataFrame], all_checks: list[Check], context) -> list[CheckResult]:
    import great_expectations as gx

    source = context.data_sources.add_or_update_pandas("omnis")
    results: list[CheckResult] = []
    for table, frame in tables.items():
        table_checks = [ch for ch in all_checks if ch.table == table]
        if not table_checks:
            continue
        for severity in ("error", "warning"):
            chosen = [ch for ch in table_checks if ch.severity == severity]
            if not chosen:
                continue
            name = f"{table}_{severity}s"
            asset = source.add_dataframe_asset(name)
            batch = asset.add_batch_definition_whole_dataframe("all")
            suite = context.suites.add(
                gx.ExpectationSuite(name=name, expectations=[_gx_expectation(ch) for ch in chosen])
            )
            definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
            index_columns = sorted({ch.index_column for ch in chosen if ch.index_column})
            fmt = {"result_format": "SUMMARY", "partial_unexpected_count": 3}
            if index_columns:
                fmt["unexpected_index_column_names"] = index_columns
            run = definition.run(batch_parameters={"dataframe": frame}, result_format=fmt)
            for check, res in zip(chosen, run.results):
                result = res.result or {}
                if res.exception_info and res.exception_info.get("raised_exception"):
                    message = res.exception_info.get("exception_message", "")
                    results.append(
                        CheckResult(
                            check.table,
                            check.column,
                            check.expectation,
                            check.severity,
                            check.description,
                            False,
                            len(frame),
                            len(frame),
                            [f"expectation could not run: {message}"],
                        )
                    )
                    continue
                results.append(
                    CheckResult(
                        check.table,
                        check.column,
                        check.expectation,
                        check.severity,
                        check.description,
                        bool(res.success),
                        int(result.get("unexpected_count") or 0),
                        int(result.get("element_count") or len(frame)),
                        _examples(result, check),
                    )
                )
    return results


def run(
    params: ValidateParams, data_dir: str | Path | None = None, report_dir: str | Path | None = None
) -> dict[str, Any]:
    """Validate a converted dataset; returns the summary (``success`` False when an error check failed).

    The report folder, when given, receives the GX Data Docs site (``index.html``) and ``validation.json``.
    """
    import great_expectations as gx

    started = time.perf_counter()
    data = paths.resolve(data_dir or params.data)
    if layout.is_sharded(data):
        data = layout.readable(data)  # the images of a sharded dataset, extracted where they changed
    for required in ("manifest.parquet", "boxes.parquet", "presence.csv"):
        if not (data / required).is_file():
            raise ValidationFailed(f"{required} is missing: run `medrov convert` first", data)
    vocab = dataset_vocabulary(data)  # the catalogue plus the vocabulary block recorded in omnis.yaml
    tables = build_tables(data, vocab, params)
    report = paths.resolve(report_dir) if report_dir else None
    workdir = Path(tempfile.mkdtemp(prefix="medrov-gx-"))
    try:
        # a fresh file context per run: no "datasource already exists" on reruns, and Data Docs can be built
        context = (
            gx.get_context(mode="file", project_root_dir=str(workdir)) if report else gx.get_context(mode="ephemeral")
        )
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # our log says what ran
        results = _run_gx(tables, checks(vocab, params), context)
        if report:
            context.build_data_docs()
            site = workdir / "gx" / "uncommitted" / "data_docs" / "local_site"
            # opened in a browser, the stock site fetches CDN scripts and an S3 logo carrying the context id
            make_offline(site, context_id=str(context.data_context_id or ""))
            report.mkdir(parents=True, exist_ok=True)
            shutil.copytree(site, report, dirs_exist_ok=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    errors = [r for r in results if not r.success and r.severity == "error"]
    warnings = [r for r in results if not r.success and r.severity == "warning"]
    summary = {
        "success": not errors,
        "expectations": len(results),
        "passed": sum(r.success for r in results),
        "failed": len(errors),
        "warnings": len(warnings),
        "rows_checked": {name: len(frame) for name, frame in tables.items()},
        "pixels_decoded": tables["manifest"].attrs.get("pixels_decoded", 0),
        "seconds": round(time.perf_counter() - started, 2),
        "results": [asdict(r) for r in results],
    }
    if report:
        (report / "validation.json").write_text(json.dumps(summary, indent=2, default=str))
        _write_summary_page(report, summary, data)
    return summary


def _write_summary_page(report: Path, summary: dict[str, Any], data: Path) -> None:
    """A self-contained ``summary.html`` (one page, no script) linked from the top of the Data Docs index,
    with every check, its counts and examples, and the GX result pages."""
    from html import escape

    pages = {
        p.parent.parent.parent.name: p.relative_to(report).as_posix() for p in report.glob("validations/*/*/*/*.html")
    }
    rows = []
    for r in sorted(summary["results"], key=lambda r: (r["success"], r["severity"] != "error", r["table"])):
        status = "ok" if r["success"] else ("FAIL" if r["severity"] == "error" else "WARN")
        suite = f"{r['table']}_{r['severity']}s"
        link = f'<a href="{escape(pages[suite])}">{escape(suite)}</a>' if suite in pages else escape(suite)
        examples = "<br>".join(escape(e) for e in r["examples"][:3]) if not r["success"] else ""
        rows.append(
            f'<tr class="{status}"><td>{status}</td><td>{escape(r["table"])}.{escape(r["column"])}</td>'
            f"<td>{escape(r['description'])}</td><td>{r['unexpected_count']} / {r['element_count']}</td>"
            f"<td>{examples}</td><td>{link}</td></tr>"
        )
    verdict = "PASSED" if summary["success"] else "FAILED"
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Omnis validation: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}th{{background:#eee}}
tr.FAIL td:first-child{{background:#f4b6b6;font-weight:bold}}tr.WARN td:first-child{{background:#f7e3a1}}
tr.ok td:first-child{{background:#c8ecc8}}.verdict{{font-size:22px;font-weight:bold}}</style></head><body>
<p class="verdict">Omnis validation {verdict}</p>
<p>{escape(str(data))}: {summary["passed"]} of {summary["expectations"]} expectations passed, {summary["failed"]} failed,
{summary["warnings"]} warnings; {sum(summary["rows_checked"].values())} rows checked
({", ".join(f"{k} {v}" for k, v in summary["rows_checked"].items())}) in {summary["seconds"]} s.
Full Great Expectations Data Docs: <a href="index.html">index.html</a>; machine-readable: <a href="validation.json">validation.json</a>.</p>
<table><tr><th>status</th><th>table.column</th><th>check</th><th>unexpected / rows</th><th>examples</th><th>GX result</th></tr>
{"".join(rows)}</table></body></html>"""  # noqa: E501
    (report / "summary.html").write_text(html)
    index = report / "index.html"
    if index.is_file():
        text = index.read_text()
        banner = f'<p style="font:16px sans-serif;padding:8px;background:#eef"><a href="summary.html">medrov summary: validation {verdict}</a> (works offline)</p>'  # noqa: E501
        if "summary.html" not in text:
            index.write_text(text.replace("<body>", "<body>" + banner, 1))


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """One line per failed or warned check, then the totals."""
    lines = [CheckResult(**r).line() for r in summary["results"] if not r["success"]]
    rows = sum(summary["rows_checked"].values())
    lines.append(
        f"validate: {summary['passed']} of {summary['expectations']} expectations passed, {summary['failed']} failed, "
        f"{summary['warnings']} warnings, {rows} rows checked"
    )
    return lines


def metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The DVC metric: totals plus pass/fail and unexpected counts per check (numbers only)."""
    checks_out = {}
    for r in summary["results"]:
        key = f"{r['table']}.{r['column']}.{r['expectation'].removeprefix('expect_')}"
        checks_out[key] = {"success": r["success"], "unexpected": r["unexpected_count"]}
    return {
        "success": summary["success"],
        "expectations": summary["expectations"],
        "passed": summary["passed"],
        "failed": summary["failed"],
        "warnings": summary["warnings"],
        "rows_checked": sum(summary["rows_checked"].values()),
        "rows_per_table": summary["rows_checked"],
        "seconds": summary["seconds"],
        "checks": checks_out,
    }
