"""The one reading of a vocabulary entry ``name/synonym/...`` (as ``omnis.yaml`` and ultralytics store it)."""

from __future__ import annotations

SYNONYM_SEPARATOR = "/"


def prompt_names(vocab_name: str) -> list[str]:
    """Every prompt of a vocabulary entry: its canonical name, then its synonyms (empty parts dropped)."""
    return [part.strip() for part in str(vocab_name).split(SYNONYM_SEPARATOR) if part.strip()]


def prompt_name(vocab_name: str) -> str:
    """The prompt of a vocabulary entry at inference: its canonical name."""
    return str(vocab_name).split(SYNONYM_SEPARATOR, 1)[0].strip()
