"""Readers per format: each returns an array with its geometry beside it and never guesses silently."""

from medrov.io.volume import Volume, read_volume, reorient

__all__ = ["Volume", "read_volume", "reorient"]
