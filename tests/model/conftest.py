"""Model-tier fixtures: ``tiny_omnis`` and ``train_overrides`` live in tests/conftest.py (shared with the
integration tier)."""
