"""Text encoders: local open_clip directory (the BioMedCLIP path), packaged MiniLM, the embedding cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medrov.text import EncoderError, build_encoder, cache_file, encode_cached, load_encoder
from tests.tiny_models import build_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_open_clip_encoder_loads_from_local_dir_and_normalises(tiny_clip):
    enc = build_encoder(f"local-dir:{tiny_clip}")
    emb = enc.encode_text(["liver", "kidney tumor", "liver"])
    assert emb.shape == (3, 512) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    assert enc.identity.startswith(f"local-dir:{tiny_clip.resolve()}@")
    assert enc.dim == 512
    # a bare directory is the same encoder
    assert build_encoder(str(tiny_clip)).identity == enc.identity


def test_open_clip_encoder_embeds_image_crops_in_the_text_space(tiny_clip):
    enc = build_encoder(str(tiny_clip))
    crops = [np.zeros((20, 31, 3), np.uint8), np.full((9, 9), 200, np.uint8)]
    feats = enc.encode_image(crops)
    assert feats.shape == (2, 512)
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)


def test_minilm_is_offline_real_and_text_only():
    enc = build_encoder("minilm")
    emb = enc.encode_text(["liver", "kidney", "car"])
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # real semantics: organs are closer to each other than to a car
    with pytest.raises(EncoderError, match="no image tower"):
        enc.encode_image([np.zeros((8, 8, 3), np.uint8)])


def test_local_dir_model_is_checked_offline_and_loads_on_first_use(tiny_clip, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder(f"local-dir:{tiny_clip}", fallback="minilm")
    assert enc.spec == f"local-dir:{tiny_clip.resolve()}" and enc._model is None  # files checked, nothing loaded
    assert enc.encode_text(["liver"]).shape == (1, 512) and enc._model is not None


def test_hub_spec_works_offline_from_the_local_hugging_face_cache(tiny_clip, tmp_path, monkeypatch):
    """``hf-hub:ORG/NAME`` (BioMedCLIP's form) offline: served from a local HF cache, in the layout a download leaves."""  # noqa: E501
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--medrov-test--tiny-clip" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_clip, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = load_encoder("hf-hub:medrov-test/tiny-clip")
    assert enc._model is None  # found in the cache without loading
    local = build_encoder(f"local-dir:{tiny_clip}")
    assert torch.allclose(enc.encode_text(["liver", "spleen"]), local.encode_text(["liver", "spleen"]), atol=1e-6)
    with pytest.raises(EncoderError, match="not in the local Hugging Face cache"):
        load_encoder("hf-hub:medrov-test/absent")


def test_unreachable_hub_model_fails_clearly_and_falls_back():
    with pytest.raises(EncoderError, match="local-dir:PATH"):
        load_encoder("biomedclip")
    assert load_encoder("biomedclip", fallback="minilm").spec == "minilm"


@pytest.mark.parametrize("spec", ["not-a-model", "local-dir:/nonexistent/dir"])
def test_bad_specs_name_the_problem(spec):
    with pytest.raises(EncoderError):
        build_encoder(spec)


def test_cache_hits_misses_and_never_crosses_encoders(tiny_clip, tmp_path):
    cache = tmp_path / "cache"
    clip = build_encoder(str(tiny_clip))
    first, hit = encode_cached(clip, ["liver", "spleen"], cache)
    assert not hit and len(list(cache.glob("*.pt"))) == 1
    again, hit = encode_cached(clip, ["liver", "spleen"], cache)
    assert hit and torch.equal(first, again)
    # another order is another list, put together from the cached rows without the encoder, and stored
    swapped, hit = encode_cached(clip, ["spleen", "liver"], cache)
    assert hit and torch.equal(swapped, first.flip(0)) and len(list(cache.glob("*.pt"))) == 2
    # a list with a text no cached list holds needs the encoder; its new rows serve later lists
    _, hit = encode_cached(clip, ["kidney", "liver"], cache)
    assert not hit
    _, hit = encode_cached(clip, ["kidney", "spleen"], cache)
    assert hit
    minilm = build_encoder("minilm")
    other, hit = encode_cached(minilm, ["liver", "spleen"], cache)
    assert not hit and other.shape == (2, 384)
    # new weights under the same directory name are a new encoder
    retrained = tmp_path / "retrained"
    build_tiny_clip(retrained, seed=1)
    moved = build_encoder(str(retrained))
    assert moved.identity != clip.identity
    assert cache_file(cache, moved.identity, ["liver", "spleen"]) != cache_file(
        cache, clip.identity, ["liver", "spleen"]
    )
    new, hit = encode_cached(moved, ["liver", "spleen"], cache)
    assert not hit and not torch.allclose(new, first)


def test_corrupt_cache_file_is_rebuilt(tiny_clip, tmp_path):
    clip = build_encoder(str(tiny_clip))
    path = cache_file(tmp_path, clip.identity, ["liver"])
    path.write_bytes(b"not a torch file")
    emb, hit = encode_cached(clip, ["liver"], tmp_path)
    assert not hit and emb.shape == (1, 512)
    assert encode_cached(clip, ["liver"], tmp_path)[1]
