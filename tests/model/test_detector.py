"""A detector re-prompted between calls uses the new vocabulary (the predictor caches a model copy)."""

from __future__ import annotations

import numpy as np
import torch


def test_changing_the_vocabulary_changes_the_predictions(tmp_path):
    from medrov.model.build import Prompter, build_world
    from medrov.model.detector import Detector
    from medrov.text import build_encoder

    model = build_world("n")
    weights = tmp_path / "tiny.pt"
    torch.save({"model": model, "train_args": {"imgsz": 64}}, weights)
    det = Detector(weights, Prompter(build_encoder("minilm"), tmp_path / "cache"))
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    det.set_vocabulary(["liver", "spleen", "kidney", "aorta"])
    four = det.predict([image], imgsz=64, conf=0.0)[0]
    assert set(four.names) <= {"liver", "spleen", "kidney", "aorta"} and len(four.names) > 0
    det.set_vocabulary(["polyp"])
    one = det.predict([image], imgsz=64, conf=0.0)[0]
    assert len(one.names) > 0 and set(one.names) == {"polyp"}


def test_inference_uses_the_asked_for_threads(tmp_path):
    """ultralytics' predictor set-up would reset torch to (cores - 1) threads; the detector keeps its own count."""
    import os

    from medrov.model.build import Prompter, build_world
    from medrov.model.detector import Detector
    from medrov.text import build_encoder

    weights = tmp_path / "tiny.pt"
    torch.save({"model": build_world("n"), "train_args": {"imgsz": 64}}, weights)
    image = np.zeros((64, 64, 3), np.uint8)
    before = torch.get_num_threads()
    try:
        for threads, expected in ((1, 1), (None, os.cpu_count())):
            det = Detector(weights, Prompter(build_encoder("minilm"), tmp_path / "cache"), threads=threads)
            det.set_vocabulary(["liver"])
            det.predict([image], imgsz=64, conf=0.0)
            assert torch.get_num_threads() == expected == det.threads
    finally:
        torch.set_num_threads(before)
