"""Absolute project paths, resolved once; nothing here depends on the working directory."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CATALOG_DIR = PACKAGE_DIR / "catalog"


def project_root() -> Path:
    """The checkout that holds params.yaml and dvc.yaml.

    ``MEDROV_ROOT`` wins; then the nearest parent of the working directory that holds both files (so a copy
    of the project, such as a ``dvc exp run --temp`` workspace, uses its own files, as git and DVC do); then
    the directory above the package (an editable install used from anywhere, e.g. inside a Ray trial).
    """
    env = os.environ.get("MEDROV_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "params.yaml").is_file() and (candidate / "dvc.yaml").is_file():
            return candidate
    if (PACKAGE_DIR.parent / "params.yaml").is_file():
        return PACKAGE_DIR.parent
    return here


def resolve(path: str | os.PathLike[str], base: Path | None = None) -> Path:
    """Absolute path: relative paths are taken from ``base`` (default: the project root)."""
    p = Path(os.path.expanduser(os.fspath(path)))
    return p if p.is_absolute() else ((base or project_root()) / p).resolve()


def shared_data_dir() -> Path:
    """Where the shared real datasets live: ``MEDROV_SHARED_DATA`` or ``<root>/../shared/data``."""
    env = os.environ.get("MEDROV_SHARED_DATA")
    return Path(env).resolve() if env else (project_root().parent / "shared" / "data").resolve()
