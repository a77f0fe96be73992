"""Serving: concurrent requests with different prompts each get answers for their own prompts."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np


def test_concurrent_requests_keep_their_own_prompts(tmp_path):
    import pandas as pd
    import torch

    from medrov.model.pyfunc import DetectorModel
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLOWorld

    weights = tmp_path / "world.pt"
    YOLOWorld("yolov8n-worldv2.yaml").save(weights)
    texts = ["liver", "spleen", "kidney", "lung"]
    torch.manual_seed(0)
    table = {"encoder": {"spec": None, "dim": 512}, "texts": texts, "lists": [], "embeddings": torch.randn(4, 512)}
    torch.save(table, tmp_path / "table.pt")
    (tmp_path / "config.json").write_text(json.dumps({"imgsz": 64, "conf": 0.0}))
    model = DetectorModel()
    model.load_context(
        SimpleNamespace(
            artifacts={
                "weights": str(weights),
                "config": str(tmp_path / "config.json"),
                "text_embeddings": str(tmp_path / "table.pt"),
            }
        )
    )
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "x.png")
    wrong: list[set] = []
    answered = []

    def client(prompts: list[str]) -> None:
        frame = pd.DataFrame({"image": [str(tmp_path / "x.png")], "prompts": ["; ".join(prompts)]})
        for _ in range(4):
            out = model.predict(None, frame, {"conf": 0.0, "imgsz": 64, "max_det": 20})
            answered.append(len(out))
            if not set(out["class"]) <= set(prompts):
                wrong.append(set(out["class"]) - set(prompts))

    threads = [threading.Thread(target=client, args=(p,)) for p in (["liver", "spleen"], ["kidney", "lung"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answered) == 8 and sum(answered) > 0  # conf 0: every request gets boxes to check
    assert not wrong, f"answers named prompts of another request: {wrong[:3]}"
