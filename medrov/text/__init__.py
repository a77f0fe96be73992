"""Text and image encoders (BioMedCLIP via open_clip, the packaged MiniLM, local open_clip models) and the
embedding cache. Nothing is loaded at import time."""

from medrov.text.cache import cache_file, encode_cached
from medrov.text.encoders import (
    BIOMEDCLIP,
    MINILM,
    Encoder,
    EncoderError,
    MiniLMEncoder,
    OpenClipEncoder,
    build_encoder,
    load_encoder,
)

__all__ = [
    "BIOMEDCLIP",
    "MINILM",
    "Encoder",
    "EncoderError",
    "MiniLMEncoder",
    "OpenClipEncoder",
    "build_encoder",
    "cache_file",
    "encode_cached",
    "load_encoder",
]
