"""Typed parameters: the only reader of params.yaml.

Every section is a pydantic model that rejects unknown keys, so a typo in params.yaml, a DVC ``-S`` override,
a Prefect parameter or a Ray Tune search-space key fails loudly instead of being ignored. Overrides use the
same dotted keys everywhere: ``data.workers=1``, ``data.ct_window=[-1000,1000]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medrov import paths
from medrov.errors import ConfigError


class Section(BaseModel):
    """Base for every params section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitParams(Section):
    """Patient/volume-level split fractions; the split of a group is a hash of (seed, source, group)."""

    train: float = Field(0.7, ge=0, le=1)
    val: float = Field(0.15, ge=0, le=1)
    test: float = Field(0.15, ge=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "SplitParams":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class DataParams(Section):
    """The ``data`` section: how raw sources become Omnis (the ``convert`` step)."""

    sources: str = "data/sources.yaml"
    out: str = "data/omnis"
    workers: int = Field(2, ge=1)
    ray_address: str | None = None
    boxes: Literal["components", "slice"] = "components"
    connectivity: Literal[1, 2] = 2
    min_box_pixels: int = Field(1, ge=1)
    skip_empty_slices: bool = True
    keep_empty_images: bool = False
    ct_window: tuple[float, float] = (-500.0, 1000.0)
    mri_percentiles: tuple[float, float] = (0.5, 99.5)
    png_compress_level: int = Field(1, ge=0, le=9)
    max_volume_bytes: int = Field(2 * 1024**3, ge=1)
    split: SplitParams = SplitParams()
    # files: a PNG + label file per image, all DVC-tracked | shards: tar shards per source and split (data/layout.py)
    layout: Literal["files", "shards"] = "files"
    shard_bytes: int = Field(1024**3, ge=1024**2)

    @model_validator(mode="after")
    def _ordered_ranges(self) -> "DataParams":
        if self.ct_window[0] >= self.ct_window[1]:
            raise ValueError(f"ct_window must be [low, high] with low < high, got {list(self.ct_window)}")
        lo, hi = self.mri_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"mri_percentiles must satisfy 0 <= low < high <= 100, got {[lo, hi]}")
        return self


class DemoParams(Section):
    """The embedded synthetic multi-source generator used when no real data is at hand (``medrov/data/demo.py``)."""

    out: str = "data/raw/synthetic"
    truth: str = Field("truth", pattern=r"^[A-Za-z0-9_.-]+$")  # full truth of every image, under ``out``
    seed: int = 0
    ct_volumes: int = Field(32, ge=1)  # per CT source
    mri_volumes: int = Field(22, ge=1)
    volume_shape: tuple[int, int, int] = (128, 128, 5)
    xray_images: int = Field(220, ge=1)
    microscopy_images: int = Field(160, ge=1)
    endoscopy_images: int = Field(140, ge=1)
    image_size: int = Field(160, ge=64)


class ValidateParams(Section):
    """The ``validate`` section: hard expectations fail the gate; distribution checks only warn."""

    data: str = "data/omnis"
    report: str | None = "reports/validate"
    coord_tolerance: float = Field(1e-4, ge=0, le=0.01)
    check_pixels: bool = True
    workers: int = Field(2, ge=1)  # processes decoding images for the pixel checks
    # images whose pixels are decoded: <= 1 a fraction (1 = every image), > 1 a count; header checks cover every row
    pixel_sample: float = Field(1.0, gt=0)
    class_share: tuple[float, float] = (0.0, 0.95)
    class_share_per_source: dict[str, tuple[float, float]] = {}
    box_size_mad: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _ordered_shares(self) -> "ValidateParams":
        if self.pixel_sample > 1 and self.pixel_sample != int(self.pixel_sample):
            raise ValueError(f"pixel_sample above 1 is a count of images, got {self.pixel_sample}")
        for name, (lo, hi) in {"class_share": self.class_share, **self.class_share_per_source}.items():
            if not 0 <= lo <= hi <= 1:
                raise ValueError(f"{name}: bounds must satisfy 0 <= low <= high <= 1, got {[lo, hi]}")
        return self


class TextParams(Section):
    """The ``text`` section: which encoder turns class names into prompt embeddings."""

    encoder: str = "biomedclip"  # biomedclip | hf-hub:ORG/NAME | local-dir:PATH | minilm
    fallback: str | None = "minilm"  # used (and logged) when the encoder cannot be loaded, e.g. offline
    cache_dir: str | None = ".cache/text"  # embeddings keyed by (encoder, names); null disables the cache


class TrainProfile(Section):
    """One training budget. Keys ultralytics knows are passed through; ``extra`` takes any other of its args."""

    model: str = "n"  # n/s/m/l/x (worldv2 yaml of that scale), a yaml, or a local checkpoint
    closed_set_model: str | None = None  # baseline; default yolov8<scale>.yaml of the same scale
    epochs: int = Field(3, ge=1)
    imgsz: int = Field(160, ge=32)
    batch: int = Field(8, ge=1)
    device: str = "cpu"
    workers: int = Field(2, ge=0)
    optimizer: str = "AdamW"
    lr0: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    patience: int = Field(100, ge=1)
    seed: int = 0
    extra: dict[str, Any] = {}


class TrainParams(Section):
    """The ``train`` section: dataset, the profile in force and the named profiles."""

    data: str = "data/omnis/omnis.yaml"
    val_data: str | None = None  # per-epoch validation on this Omnis's val split instead (same classes)
    profile: str = "demo"
    project: str = "runs"
    profiles: dict[str, TrainProfile] = {"demo": TrainProfile()}

    @model_validator(mode="after")
    def _profile_exists(self) -> "TrainParams":
        if self.profile not in self.profiles:
            raise ValueError(f"profile {self.profile!r} is not one of {sorted(self.profiles)}")
        return self

    @property
    def active(self) -> TrainProfile:
        return self.profiles[self.profile]


class EvaluateParams(Section):
    """The ``evaluate`` section: open-vocabulary mAP on a split, prompts = the classes each source annotates."""

    split: Literal["train", "val", "test"] = "test"
    conf: float = Field(0.001, ge=0, le=1)
    iou: float = Field(0.7, gt=0, le=1)
    max_det: int = Field(300, ge=1)
    metrics: str | None = "metrics/eval.json"  # headline figures (the DVC metric)
    detail: str | None = "reports/eval.json"  # the whole result: per class, modality and source
    plots: str | None = "reports/eval"
    overlays: int = Field(4, ge=0)  # test images per modality drawn with predicted vs true boxes (0 = none)
    overlay_conf: float = Field(0.25, ge=0, le=1)  # predictions drawn from this score on


class PseudoParams(Section):
    """The ``pseudo`` section: MedROV's training mechanisms for sources that do not annotate every class.

    For each confident prediction (``conf >= conf_c``) whose IoU with every ground-truth box of its image is below
    ``iou_t``, the presence matrix M of the image's source decides: M=0 (may be present, not annotated) makes it a
    pseudo ground-truth box; M=1 or -1 (it would have been annotated, or cannot exist) makes it a false positive
    whose image crop replaces a negative prompt.
    """

    labels: bool = True  # M=0 -> pseudo ground truth
    negatives: bool = True  # M=1/-1 -> image-feature negatives (needs an encoder with an image tower)
    presence_sampling: bool = True  # M=0 classes of an image's sources are never sampled as negative prompts
    probe: bool = True  # the teacher also scores an image's M=0 classes its prompts leave out (labels need it then)
    iou_t: float = Field(0.3, ge=0, le=1)  # T: "new" when IoU with every GT box is below this
    conf_c: float = Field(0.9, ge=0, le=1)  # C: minimum confidence
    conf_c_class: dict[str, float] = {}  # C per class name (or synonym), overriding conf_c for that class
    nms_iou: float = Field(0.3, gt=0, le=1)  # class-agnostic NMS on the teacher's predictions
    crop_min: int = Field(50, ge=1)  # negative crops: box side bounds in pixels of the training image
    crop_max: int = Field(320, ge=1)
    crops_per_image: int = Field(5, ge=0)
    enlarge: float = Field(0.3, ge=0)  # crop = box enlarged by this fraction
    negative_class: Literal["slot", "predicted"] = "slot"  # the class id a negative box is appended with
    teacher: Literal["ema", "model", "student"] = (
        "ema"  # extra no-grad pass of the EMA / current weights, or the training forward itself
    )
    start_epoch: int = Field(0, ge=0)  # epochs of plain training before the mechanisms switch on
    gallery: int = Field(16, ge=0)  # pseudo-labelled crops kept per class for the audit gallery

    @field_validator("conf_c_class")
    @classmethod
    def _class_c_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"conf_c_class: a C must lie in [0, 1], got {bad}")
        return value

    @model_validator(mode="after")
    def _crop_bounds(self) -> "PseudoParams":
        if self.crop_min > self.crop_max:
            raise ValueError(f"crop_min ({self.crop_min}) must not exceed crop_max ({self.crop_max})")
        return self


class TrackingParams(Section):
    """The ``tracking`` section: where MLflow runs, models and the registry live.

    ``MLFLOW_TRACKING_URI`` in the environment wins over ``uri``; ``uri: null`` is the embedded SQLite store
    ``sqlite:///<project>/mlflow.db`` with artifacts under ``<project>/<artifacts>``, no server needed.
    """

    enabled: bool = True
    uri: str | None = None  # null: sqlite:///<project>/mlflow.db; http://host:port for an `mlflow server`
    artifacts: str = "mlartifacts"  # artifact root of experiments this project creates in a local store
    experiment: str = "medrov"
    epoch_eval: bool = True  # per-epoch open-vocabulary mAP50 (base/novel/per modality) on promote.split
    dataset_card: str | None = "reports/dataset"  # logged with each train run when present (`medrov report --out`)
    server_timeout: float = Field(5.0, gt=0)  # seconds to wait for an `mlflow server` before giving up
    ui: str = "http://127.0.0.1:5000"  # the MLflow UI that summaries link to when ``uri`` is not a server (`mlflow ui`)


class PromoteParams(Section):
    """The ``promote`` section: the gate a challenger must pass to become the registry's ``champion``."""

    model_name: str = "medrov"  # registered model name
    split: Literal["train", "val", "test"] = "val"
    metric: Literal["map50", "map50_95"] = "map50_95"  # compared on base+novel classes and per modality
    min_gain: float = Field(0.01, ge=0)  # base+novel metric must improve by at least this
    max_modality_drop: float = Field(0.05, ge=0)  # and no modality may drop by more than this


SEARCH_KINDS = ("uniform", "loguniform", "randint", "choice")


class TuneResources(Section):
    """What one trial holds: CPUs and GPUs, fractions allowed (0.5 GPU = two trials share one card)."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class TuneParams(Section):
    """The ``tune`` section: a Ray Tune sweep whose trials are short trainings of a profile, ASHA on a val metric.

    ``space`` maps any dotted params key to one distribution: ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``,
    ``{randint: [lo, hi]}`` (hi exclusive) or ``{choice: [a, b, ...]}``.
    """

    profile: str | None = None  # training profile of the trials (default: train.profile)
    epochs: int = Field(3, ge=1)  # per trial; ASHA's max_t
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = Field(2, ge=2)
    num_samples: int = Field(8, ge=1)
    max_concurrent: int | None = Field(None, ge=1)  # default: as many as the resources allow
    metric: str = "metrics/mAP50(B)"  # the ultralytics validation metric reported each epoch
    mode: Literal["max", "min"] = "max"
    resources: TuneResources = TuneResources()
    space: dict[str, dict[str, list[Any]]] = {
        "pseudo.iou_t": {"uniform": [0.2, 0.4]},
        "pseudo.conf_c": {"uniform": [0.3, 0.95]},
    }
    seed: int | None = 0  # seeds the random search; null: a different sweep each time
    ray_address: str | None = (
        None  # a Ray cluster (ray://host:10001), auto (the one RAY_ADDRESS names); null/local: a Ray here
    )
    num_cpus: int | None = Field(None, ge=1)  # local Ray only; default: every core
    num_gpus: int | None = Field(None, ge=0)  # local Ray only; default: what Ray detects
    storage: str = "runs/tune"  # Ray Tune results, one folder per trial (a shared path or s3:// on a cluster)
    best: str = "metrics/tune_best.yaml"  # the best config as a params.yaml fragment

    @model_validator(mode="after")
    def _valid_space(self) -> "TuneParams":
        for key, dist in self.space.items():
            if len(dist) != 1 or next(iter(dist)) not in SEARCH_KINDS:
                raise ValueError(f"space.{key}: give exactly one of {', '.join(SEARCH_KINDS)}, got {sorted(dist)}")
            kind, values = next(iter(dist.items()))
            if kind == "choice":
                if not values:
                    raise ValueError(f"space.{key}: choice needs at least one value")
                continue
            if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise ValueError(f"space.{key}: {kind} needs [low, high] numbers, got {values}")
            lo, hi = values
            if not lo < hi or (kind == "loguniform" and lo <= 0):
                raise ValueError(
                    f"space.{key}: {kind} needs low < high{' and low > 0' if kind == 'loguniform' else ''}, got {values}"  # noqa: E501
                )
        return self


class Params(Section):
    """All of params.yaml."""

    data: DataParams = DataParams()
    demo: DemoParams = DemoParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    text: TextParams = TextParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    pseudo: PseudoParams = PseudoParams()
    tracking: TrackingParams = TrackingParams()
    promote: PromoteParams = PromoteParams()
    tune: TuneParams = TuneParams()

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from exc
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply dotted ``a.b=c`` overrides to a raw params mapping (values are parsed as YAML)."""
    out = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for item in overrides:
        keys, value = _parse_override(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return out


def default_params_path() -> Path:
    return paths.project_root() / "params.yaml"


def load_params(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Read params.yaml (default: the project's), apply overrides, validate.

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown or a value is out of range.
    """
    file = Path(path) if path else default_params_path()
    raw: dict[str, Any] = {}
    if file.is_file():
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"not valid YAML: {exc}", file) from exc
    elif path is not None:
        raise ConfigError("params file not found", file)
    if not isinstance(raw, dict):
        raise ConfigError("params must be a mapping of sections", file)
    raw = apply_overrides(raw, overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(problems, file) from exc


def with_overrides(params: Params, overrides: list[str] | tuple[str, ...]) -> Params:
    """A validated copy of ``params`` with dotted overrides applied (Ray trials, Prefect parameters).

    Raises:
        ConfigError: a key is unknown or a value is out of range.
    """
    raw = apply_overrides(params.model_dump(mode="json", by_alias=True), overrides)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{problems} (overrides: {' '.join(overrides)})") from exc


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a params model (for trackers and search spaces): nested models and mappings are
    expanded, tuples become lists."""
    items = (
        ((info.alias or key, getattr(params, key)) for key, info in type(params).model_fields.items())
        if isinstance(params, BaseModel)
        else params.items()
    )
    flat: dict[str, Any] = {}
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (BaseModel, dict)):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat
