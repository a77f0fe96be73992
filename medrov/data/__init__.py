"""Omnis data layer: normalise, slice, box, convert, presence matrix, demo sources."""
