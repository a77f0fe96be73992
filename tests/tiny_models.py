"""Tiny models the tests build themselves (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

# the demo generator shrunk to a converted Omnis of a few seconds (tests' ``tiny_omnis``, gpu_check's --dry-run)
TINY_DEMO = [
    "demo.ct_volumes=2",
    "demo.mri_volumes=2",
    "demo.volume_shape=[64,64,8]",
    "demo.xray_images=4",
    "demo.microscopy_images=6",
    "demo.endoscopy_images=4",
    "demo.image_size=64",
]

TINY_CLIP_CFG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def build_tiny_clip(directory: Path, seed: int = 0, embed_dim: int = 512) -> Path:
    """A randomly initialised 512-d CLIP (~3.5 M parameters, open_clip's bundled tokenizer) saved in open_clip's
    local-dir layout (``open_clip_config.json`` + ``open_clip_model.safetensors``), like a downloaded BioMedCLIP."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    cfg = json.loads(json.dumps(TINY_CLIP_CFG))
    cfg["embed_dim"] = embed_dim
    model = open_clip.CLIP(**cfg)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "open_clip_model.safetensors")
    )
    return directory
