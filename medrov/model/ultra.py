"""ultralytics, set up once: offline, settings in the project, no integrations of its own, a local font."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from medrov.env import apply_offline_env

_OFF = ("sync", "clearml", "comet", "dvc", "mlflow", "raytune", "tensorboard", "wandb", "vscode_msg", "openvino_msg")


def prepare_ultralytics() -> None:
    """Call before importing ultralytics anywhere in a process (CLI, tests, Ray trials, Prefect tasks).

    ultralytics downloads ``Arial.ttf`` from GitHub to draw plots (YOLO_OFFLINE does not stop it): matplotlib's
    DejaVuSans is put in its place. Its own MLflow/Ray Tune/DVC callbacks are switched off: we log ourselves.
    It also replaces ``PIL.Image.open`` process-wide (see below).
    """
    apply_offline_env()
    config = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    config.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (config / name).exists():
            shutil.copyfile(font, config / name)
    from ultralytics.utils import SETTINGS, patches

    # ultralytics patches PIL.Image.open to pip-install a HEIF plugin on the first unreadable image; keep PIL's
    # own behaviour so a corrupt file stays an UnidentifiedImageError (quarantined with its reason), offline
    patches._pil_plugins_registered = True

    from medrov.model.weights import apply_load_policy

    apply_load_policy()  # weights are data: restricted (weights_only) checkpoint loads unless trusted
    changes = {k: False for k in _OFF if SETTINGS.get(k) is not False}
    if changes:
        SETTINGS.update(changes)
