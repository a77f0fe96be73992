"""Validation speed: rows/s of the Great Expectations gate, against converting the images the rows came from.

Builds a CSV-box source of small images with many boxes each (default 10,000 images x 100 boxes = 1 M box
rows), converts it with `medrov convert` (timed), validates the result with `medrov validate` (timed) and
prints rows/s and the ratio validate/convert (target < 1: validating is cheaper than converting).

    python bench/validate.py [--images 10000] [--boxes-per-image 100] [--size 96]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medrov.config import load_params  # noqa: E402
from medrov.data import convert, validate  # noqa: E402
from medrov.env import apply_offline_env  # noqa: E402


def make_source(root: Path, images: int, per_image: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    with open(root / "boxes.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "x1", "y1", "x2", "y2"])
        for i in range(images):
            name = f"img_{i:06d}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / "images" / name, compress_level=1
            )
            x0 = rng.uniform(0, size - 8, per_image)
            y0 = rng.uniform(0, size - 8, per_image)
            w = rng.uniform(2, 8, per_image)
            h = rng.uniform(2, 8, per_image)
            labels = rng.choice(["RBC", "WBC", "Platelets"], per_image)
            writer.writerows(
                zip([name] * per_image, labels, x0.round(2), y0.round(2), (x0 + w).round(2), (y0 + h).round(2))
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--boxes-per-image", type=int, default=100)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    apply_offline_env()
    params = load_params()
    with tempfile.TemporaryDirectory(prefix="medrov-bench-validate-") as tmp:
        tmp = Path(tmp)
        make_source(tmp / "raw", args.images, args.boxes_per_image, args.size)
        sources = tmp / "sources.yaml"
        sources.write_text(
            yaml.safe_dump(
                {
                    "sources": [
                        {
                            "name": "BenchSmear",
                            "root": str(tmp / "raw"),
                            "modality": "microscopy",
                            "format": "csv",
                            "images": "images",
                            "annotations": "boxes.csv",
                            "label_map": {"RBC": "red blood cell", "WBC": "white blood cell", "Platelets": "platelets"},
                        }
                    ]
                }
            )
        )
        start = time.perf_counter()
        summary = convert.run(params.data, sources_file=sources, out_dir=tmp / "omnis", progress=False)
        t_convert = time.perf_counter() - start
        start = time.perf_counter()
        result = validate.run(params.validate_, data_dir=tmp / "omnis")
        t_validate = time.perf_counter() - start
    rows = summary["boxes"]
    print(
        f"{summary['images']} images, {rows} box rows, {sum(result['rows_checked'].values())} rows checked in all tables"  # noqa: E501
    )
    print(f"convert ({params.data.workers} workers): {t_convert:7.1f} s  {rows / t_convert:10.0f} box rows/s")
    print(
        f"validate:               {t_validate:7.1f} s  {rows / t_validate:10.0f} box rows/s  "
        f"({result['passed']}/{result['expectations']} expectations passed)"
    )
    print(f"validate / convert time: {t_validate / t_convert:.2f} (target < 1)")


if __name__ == "__main__":
    main()
