"""Model tests use ``tiny_omnis`` and ``train_overrides`` from tests/conftest.py (shared with tune and flow tests)."""
