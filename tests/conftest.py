"""Test session set-up: offline switches, a shrunken copy of the real params, shared data location, and a tiny
converted Omnis with params pointing training at it (model, tune and flow tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDROV_SHARED_DATA", ROOT.parent / "shared" / "data")).resolve()


# what the project's own commands write (`make demo`, `medrov train`, the embedded MLflow store): no test may touch it
PROJECT_STATE = ("mlflow.db", "mlartifacts", "mlruns", "runs", ".cache")

# the tier of a test is its folder (tests/infra reads files only: unit); `make test-fast` runs unit and data
TIERS = {
    "unit": "unit",
    "infra": "unit",
    "data": "data",
    "faults": "data",
    "model": "model",
    "integration": "integration",
}


def pytest_configure(config: pytest.Config) -> None:
    from medrov.env import apply_offline_env
    from medrov.model.ultra import prepare_ultralytics

    apply_offline_env()
    # before any test module imports ultralytics: its import replaces PIL.Image.open with one that pip-installs a
    # HEIF plugin on the first unreadable image (network, and a corrupt PNG would read as "internal error")
    prepare_ultralytics()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tier of its folder, unless it carries an explicit tier marker already."""
    tests = Path(__file__).resolve().parent
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(tests).parts[0]
        except ValueError:
            continue
        own = {m.name for m in item.iter_markers()} & set(TIERS.values())
        if folder in TIERS and not own:
            item.add_marker(getattr(pytest.mark, TIERS[folder]))


def project_state(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """Every file under the project's own outputs (:data:`PROJECT_STATE`) -> (size, mtime in ns)."""
    out = {}
    for name in PROJECT_STATE:
        top = root / name
        files = [top] if top.is_file() else (p for p in top.rglob("*") if p.is_file()) if top.is_dir() else []
        for file in files:
            try:
                st = file.stat()
            except FileNotFoundError:  # removed while we walked: the comparison reports it
                continue
            out[file.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session", autouse=True)
def project_tree_untouched():
    """The suite leaves the project's mlflow.db, mlartifacts/, mlruns/, runs/ and .cache/ as it found them: every
    test writes under its own tmp_path (a failure here names what changed; a demo run in this checkout at the same
    time would show up too)."""
    before = project_state()
    yield
    after = project_state()
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    assert not (changed or added or removed), (
        f"the tests changed the project tree: added {added[:10]} ({len(added)}), changed {changed[:10]} ({len(changed)}), "  # noqa: E501
        f"removed {removed[:10]} ({len(removed)})"
    )


@pytest.fixture
def data_params():
    """The project's real ``data`` section, single-process so tests are deterministic and quiet."""
    from medrov.config import load_params

    return load_params(ROOT / "params.yaml", ["data.workers=1"]).data


@pytest.fixture
def shared_data() -> Path:
    """The shared real datasets; tests that need them skip with a reason only when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


# A tiny converted Omnis (the demo generator, shrunk) and params pointing training at it: shared by the model
# and integration tiers.
@pytest.fixture(scope="session")
def tiny_omnis(tmp_path_factory) -> Path:
    """demo sources (2 CT, 2 MRI volumes of 64x64x8, a few 2D images) converted into ``<tmp>/data/omnis``."""
    from medrov.config import load_params
    from medrov.data import convert, demo
    from tests.tiny_models import TINY_DEMO

    root = tmp_path_factory.mktemp("tiny-omnis")
    params = load_params(
        ROOT / "params.yaml",
        [*TINY_DEMO, "data.workers=1"],
    )
    demo.generate(params.demo, root / "data" / "raw" / "synthetic")
    text = (ROOT / "data" / "sources.yaml").read_text()
    (root / "data" / "sources.yaml").write_text(text.replace("{shared}", str(root / "no-shared-data")))
    convert.run(
        params.data, sources_file=root / "data" / "sources.yaml", out_dir=root / "data" / "omnis", progress=False
    )
    return root / "data" / "omnis"


@pytest.fixture
def train_overrides(tiny_omnis: Path, tmp_path: Path) -> list[str]:
    """The real params, shrunk: 1 epoch at 64 px, MiniLM, everything written under tmp_path."""
    return [
        f"train.data={tiny_omnis / 'omnis.yaml'}",
        f"train.project={tmp_path / 'runs'}",
        "train.profiles.demo.epochs=1",
        "train.profiles.demo.imgsz=64",
        "train.profiles.demo.batch=8",
        "train.profiles.demo.workers=0",
        "text.encoder=minilm",
        f"text.cache_dir={tmp_path / 'text-cache'}",
        "evaluate.metrics=null",
        "evaluate.plots=null",
    ]
