"""Inference on new inputs: reading pictures/NIfTI/DICOM into frames, linking 2D boxes into 3D, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medrov.errors import ConfigError, SourceReadError
from medrov.model.detector import Detections
from medrov.model.predict import link_boxes_3d, load_inputs, predict_path
from tests.data.conftest import ct_volume, save_nifti, write_dicom_series

PROMPTS = ["liver", "spleen"]


def _det(*boxes: tuple[str, float, tuple[float, float, float, float]]) -> Detections:
    """Detections from ``(label, score, (x0, y0, x1, y1))`` triples."""
    return Detections(
        np.array([b for _, _, b in boxes], dtype=np.float32).reshape(-1, 4),
        np.array([s for _, s, _ in boxes], dtype=np.float32),
        [n for n, _, _ in boxes],
    )


# ---------------------------------------------------------------- link_boxes_3d


def test_overlapping_boxes_on_consecutive_slices_become_one_3d_box():
    per_slice = [
        (4, _det(("liver", 0.9, (12, 10, 32, 30)))),
        (3, _det(("liver", 0.5, (10, 10, 30, 30)))),  # order of the input does not matter
        (5, _det(("liver", 0.7, (11, 12, 31, 34)))),
    ]
    [box] = link_boxes_3d(per_slice)
    assert box["label"] == "liver"
    assert box["slices"] == [3, 5]
    assert box["n_slices"] == 3
    assert box["score"] == pytest.approx(0.9)
    assert box["box"] == [10.0, 10.0, 3, 32.0, 34.0, 6]  # x/y union; z1 exclusive


def test_other_label_at_the_same_place_is_a_separate_3d_box():
    per_slice = [
        (3, _det(("liver", 0.8, (10, 10, 30, 30)), ("spleen", 0.6, (10, 10, 30, 30)))),
        (4, _det(("liver", 0.7, (10, 10, 30, 30)), ("spleen", 0.9, (10, 10, 30, 30)))),
    ]
    boxes = link_boxes_3d(per_slice)
    assert [(b["label"], b["slices"]) for b in boxes] == [("spleen", [3, 4]), ("liver", [3, 4])]  # by score


def test_gap_up_to_max_gap_links_and_beyond_splits():
    box = (10, 10, 30, 30)
    bridged = link_boxes_3d([(3, _det(("liver", 0.8, box))), (5, _det(("liver", 0.8, box)))], max_gap=1)
    assert [(b["slices"], b["n_slices"]) for b in bridged] == [([3, 5], 2)]
    split = link_boxes_3d([(3, _det(("liver", 0.8, box))), (6, _det(("liver", 0.7, box)))], max_gap=1)
    assert sorted(b["slices"] for b in split) == [[3, 3], [6, 6]]
    consecutive_only = link_boxes_3d([(3, _det(("liver", 0.8, box))), (5, _det(("liver", 0.8, box)))], max_gap=0)
    assert len(consecutive_only) == 2


def test_non_overlapping_boxes_on_adjacent_slices_stay_apart():
    per_slice = [(3, _det(("liver", 0.8, (0, 0, 10, 10)))), (4, _det(("liver", 0.8, (20, 20, 30, 30))))]
    assert len(link_boxes_3d(per_slice)) == 2
    # IoU 1/3 (two 10x10 boxes shifted by 5 px): linked at threshold 0.3, not at 0.5
    shifted = [(3, _det(("liver", 0.8, (0, 0, 10, 10)))), (4, _det(("liver", 0.8, (5, 0, 15, 10))))]
    assert len(link_boxes_3d(shifted, iou_threshold=0.3)) == 1
    assert len(link_boxes_3d(shifted, iou_threshold=0.5)) == 2


def test_two_objects_of_one_label_are_tracked_separately_and_a_track_takes_one_box_per_slice():
    left, right = (0, 0, 10, 10), (40, 0, 50, 10)
    per_slice = [
        (0, _det(("liver", 0.9, left), ("liver", 0.6, right))),
        (1, _det(("liver", 0.5, right), ("liver", 0.8, left), ("liver", 0.7, (1, 0, 11, 10)))),
    ]
    boxes = link_boxes_3d(per_slice)
    spans = sorted((b["box"][0], b["slices"][0], b["slices"][1]) for b in boxes)
    # left track takes the 0.8 box, the overlapping 0.7 duplicate starts its own; right track continues
    assert spans == [(0.0, 0, 1), (1.0, 1, 1), (40.0, 0, 1)]


def test_no_detections_give_no_3d_boxes():
    assert link_boxes_3d([(0, _det()), (1, _det())]) == []
    assert link_boxes_3d([]) == []


# ---------------------------------------------------------------- load_inputs


def test_ct_nifti_gives_one_uint8_frame_per_axial_slice_with_the_hu_window(tmp_path):
    ct, _ = ct_volume(0)  # (32, 32, 6) int16 with -1000 HU air
    path = save_nifti(tmp_path / "case.nii.gz", ct)
    frames = load_inputs(path)
    assert [f.slice_index for f in frames] == list(range(6))
    assert all(f.image.dtype == np.uint8 and f.image.shape == (32, 32) for f in frames)
    assert {f.name for f in frames} == {"case"} and frames[0].modality == "ct"
    # HU window (-500, 1000): air is 0, soft tissue (~40 HU) maps near (540 / 1500) * 255 = 92
    assert frames[2].image.min() == 0
    assert 70 < float(np.median(frames[2].image[8:24, 8:24])) < 115


def test_mri_like_nifti_gets_percentile_scaling(tmp_path):
    rng = np.random.default_rng(0)
    mri = rng.uniform(0, 900, (16, 20, 4)).astype(np.float32)
    frames = load_inputs(save_nifti(tmp_path / "t1.nii", mri))
    assert len(frames) == 4 and frames[0].modality == "mri"
    assert frames[0].image.shape == (20, 16)  # (rows, cols) = (y, x)
    assert max(int(f.image.max()) for f in frames) == 255
    assert load_inputs(tmp_path / "t1.nii", modality="ct")[0].modality == "ct"


def test_jpeg_is_one_rgb_frame(tmp_path):
    pixels = np.zeros((40, 56, 3), dtype=np.uint8)
    pixels[:, :, 0] = 200
    Image.fromarray(pixels).save(tmp_path / "smear.jpg", quality=95)
    [frame] = load_inputs(tmp_path / "smear.jpg")
    assert (frame.name, frame.slice_index) == ("smear", None)
    assert frame.image.shape == (40, 56, 3) and frame.image.dtype == np.uint8
    assert abs(int(frame.image[..., 0].mean()) - 200) < 5 and frame.image[..., 1].mean() < 5


def test_dicom_series_folder_or_file_gives_axial_frames_in_position_order(tmp_path):
    hu = np.full((24, 20, 5), -1000, dtype=np.int16)
    for k in range(5):
        hu[2:10, 3:9, k] = 100 * k  # brightness grows with the slice position
    files = write_dicom_series(tmp_path / "series", hu)  # files are named in reverse slice order
    frames = load_inputs(tmp_path / "series")
    assert [f.slice_index for f in frames] == list(range(5))
    assert all(f.image.shape == (20, 24) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].modality == "ct" and frames[0].name == "series"
    means = [float(f.image[3:9, 2:10].mean()) for f in frames]  # rows=y, cols=x (LPS: no flip for IOP 1,0,0,0,1,0)
    assert means == sorted(means) and means[-1] > means[0] + 50
    [single] = load_inputs(files[0])
    assert single.image.shape == (20, 24)


def test_folder_of_mixed_inputs_gives_all_of_them(tmp_path):
    folder = tmp_path / "inputs"
    save_nifti(folder / "ct.nii.gz", ct_volume(1)[0])
    Image.fromarray(np.full((30, 30), 128, dtype=np.uint8)).save(folder / "xray.png")
    write_dicom_series(folder / "patient1" / "series", np.full((16, 16, 3), 40, dtype=np.int16))
    Image.fromarray(np.full((30, 30), 64, dtype=np.uint8)).save(folder / "ct.png")  # same stem as ct.nii.gz
    (folder / "notes.txt").write_text("ignored")
    frames = load_inputs(folder)
    counts = {n: sum(f.name == n for f in frames) for n in {f.name for f in frames}}
    assert counts == {"ct": 6, "ct-2": 1, "xray": 1, "patient1__series": 3}


def test_corrupt_inputs_raise_naming_the_file(tmp_path):
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(SourceReadError, match="cannot read NIfTI") as err:
        load_inputs(corrupt)
    assert "broken.nii.gz" in str(err.value)
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"not a png")
    with pytest.raises(SourceReadError, match="bad.png"):
        load_inputs(bad_png)
    with pytest.raises(SourceReadError, match="not found"):
        load_inputs(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceReadError, match="no picture"):
        load_inputs(tmp_path / "empty")
    with pytest.raises(ConfigError, match="modality"):
        load_inputs(corrupt, modality="pet")


# ---------------------------------------------------------------- predict_path with a real (untrained) YOLO-World


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """An untrained yolov8n-worldv2 saved as an ultralytics checkpoint, with MiniLM prompts."""
    from medrov.model.ultra import prepare_ultralytics

    prepare_ultralytics()
    import torch

    from medrov.model.build import Prompter, build_world
    from medrov.model.detector import Detector
    from medrov.text import build_encoder

    root = tmp_path_factory.mktemp("predict-model")
    torch.manual_seed(0)
    weights = root / "world.pt"
    torch.save({"model": build_world("n", nc=len(PROMPTS)), "train_args": {"imgsz": 64}}, weights)
    return Detector(weights, Prompter(build_encoder("minilm"), root / "text-cache"))


def _check_json(path: Path, n_frames: int, volume: bool) -> dict:
    payload = json.loads(path.read_text())
    assert payload["prompts"] == PROMPTS and payload["weights"]["path"].endswith("world.pt")
    assert len(payload["frames"]) == n_frames
    for frame in payload["frames"]:
        assert (frame["slice_index"] is None) is not volume
        for box in frame["boxes"]:
            assert box["label"] in PROMPTS and len(box["box"]) == 4 and 0.0 <= box["score"] <= 1.0
    assert ("boxes_3d" in payload) is volume
    return payload


def test_predict_on_a_picture_writes_json_and_overlay(detector, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "cells.png")
    summary = predict_path(detector, tmp_path / "cells.png", PROMPTS, tmp_path / "out", imgsz=64, conf=0.0)
    payload = _check_json(tmp_path / "out" / "cells.json", 1, volume=False)
    assert payload["input"] == str(tmp_path / "cells.png")
    assert payload["frames"][0]["boxes"], "conf=0 must keep the untrained model's boxes"
    overlay = Image.open(tmp_path / "out" / "cells.png")
    assert overlay.size == (512, 384) and overlay.mode == "RGB"  # 64x48 upscaled 8 times: captions readable
    assert summary["json"] == [str(tmp_path / "out" / "cells.json")]
    assert summary["overlays"] == [str(tmp_path / "out" / "cells.png")]
    assert summary["inputs"] == 1 and summary["frames"] == 1 and summary["boxes"] == len(payload["frames"][0]["boxes"])


def test_predict_on_a_volume_writes_per_slice_overlays_and_3d_boxes(detector, tmp_path):
    save_nifti(tmp_path / "ct.nii.gz", ct_volume(2)[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct_slice099.png").write_bytes(b"stale overlay of an earlier run")
    summary = predict_path(detector, tmp_path / "ct.nii.gz", PROMPTS, out, imgsz=64, conf=0.0)
    payload = _check_json(out / "ct.json", 6, volume=True)
    assert payload["modality"] == "ct"
    assert [f["slice_index"] for f in payload["frames"]] == list(range(6))
    assert isinstance(payload["boxes_3d"], list) and payload["boxes_3d"]
    for box in payload["boxes_3d"]:
        assert box["label"] in PROMPTS and 0 <= box["box"][2] < box["box"][5] <= 6
    with_boxes = [f["slice_index"] for f in payload["frames"] if f["boxes"]]
    expected = sorted(str(out / f"ct_slice{k:03d}.png") for k in with_boxes)
    assert sorted(summary["overlays"]) == expected and with_boxes
    montage = str(out / "ct_montage.png")
    assert summary["montages"] == [montage] and payload["montage"] == montage
    assert sorted(str(p) for p in out.glob("*.png")) == sorted([*expected, montage])  # the stale overlay is gone
    assert Image.open(expected[0]).size == (512, 512)  # a 32x32 slice upscaled 16 times


def test_predict_on_a_folder_skips_an_unreadable_input_and_reports_it(detector, tmp_path):
    folder = tmp_path / "inputs"
    write_dicom_series(folder / "series", np.full((16, 16, 3), 40, dtype=np.int16))
    Image.fromarray(np.full((32, 32), 90, dtype=np.uint8)).save(folder / "xray.png")
    (folder / "broken.nii.gz").write_bytes(b"garbage")
    # with ultralytics imported, PIL's patched open raises ImportError (no pi_heif) on an unidentifiable file
    (folder / "broken.png").write_bytes(b"garbage")
    summary = predict_path(detector, folder, PROMPTS, tmp_path / "out", imgsz=64, conf=0.0)
    assert sorted(Path(p).name for p in summary["json"]) == ["series.json", "xray.json"]
    assert sorted(Path(s["input"]).name for s in summary["skipped"]) == ["broken.nii.gz", "broken.png"]
    assert all(Path(s["input"]).name in s["reason"] for s in summary["skipped"])
    _check_json(tmp_path / "out" / "series.json", 3, volume=True)
    _check_json(tmp_path / "out" / "xray.json", 1, volume=False)
    with pytest.raises(SourceReadError, match="broken.nii.gz"):
        predict_path(detector, folder / "broken.nii.gz", PROMPTS, tmp_path / "out2", imgsz=64, conf=0.0)
