"""One exception type per failure family; each carries the file and the reason."""

from __future__ import annotations

from pathlib import Path


class MedrovError(Exception):
    """Base class: ``str(err)`` is one readable line naming the file (when there is one) and the reason.

    ``exit_code`` is the status the ``medrov`` command exits with when this error ends it.
    """

    exit_code = 2

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ConfigError(MedrovError):
    """params.yaml, a sources file or an override is invalid."""


class SourcesFileError(ConfigError):
    """A sources file has one or more problems; ``problems`` lists every one (reported together, numbered)."""

    def __init__(self, problems: list[str], path: str | Path | None = None):
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"{count}: " + "; ".join(f"[{i}] {p}" for i, p in enumerate(self.problems, 1)), path)


class SourceReadError(MedrovError):
    """An input file cannot be read or makes no sense (corrupt, NaN voxels, mismatched mask...)."""


class EmptySource(MedrovError):
    """A source of the sources file gave no image (nothing found, or every input quarantined) and is not optional."""

    exit_code = 1


class ValidationFailed(MedrovError):
    """The converted dataset failed hard data-quality expectations (the gate: ``medrov validate`` exits 1)."""

    exit_code = 1


class TrackingError(MedrovError):
    """MLflow tracking or the model registry cannot do what was asked (server down, run or model missing)."""


class StepFailed(MedrovError):
    """A pipeline step run as a command (``dvc repro``, a ``medrov`` subcommand) exited with an error."""


class ModelError(MedrovError):
    """A model cannot be built, loaded or given prompts."""


class EncoderError(MedrovError):
    """A text/image encoder cannot be loaded or cannot do what was asked."""


class TuneFailed(MedrovError):
    """The sweep could not run, or no trial reported the metric."""


class OutputBusy(MedrovError):
    """Another process is writing the same output folder (it holds its lock)."""
