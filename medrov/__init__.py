"""medrov: real-time open-vocabulary detection for medical images."""

__version__ = "0.1.0"
