"""Loading speed of the real-layout datasets: samples/s through the DataLoader with 0, 1 and 2 workers.

`python benchmarks/bench_loading.py --layout nyud_mt -n 64` writes a synthetic tree in the real layout
(480x640 for NYUD, mtbench.data.layouts) into a temporary folder, then measures in one process:
- image decoding alone, PIL against torchvision.io (the baseline is PIL; ratio = torchvision / PIL);
- full samples (files read, converted, `atrc` train transform) per second through a DataLoader with
  0, 1 and 2 worker processes, batch 8, one pass after a warm-up batch.
Prints a JSON object. Outside the test suite: speed is measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.io
from PIL import Image
from torch.utils.data import DataLoader

from mtbench.data import build_dataset
from mtbench.data.layouts import write_layout
from mtbench.engine.batching import collate

DATASET_OF_LAYOUT = {"nyud_mt": "nyud", "nyudv2": "nyud", "pascal_context": "pascal_context"}
IMAGE_FOLDER = {"nyud_mt": "images", "nyudv2": "images", "pascal_context": "JPEGImages"}


def decode_rate(files: list[Path], decode) -> float:
    """Images per second for `decode` over `files` (two passes, the second timed)."""
    for f in files:
        decode(f)
    start = time.perf_counter()
    for f in files:
        decode(f)
    return len(files) / (time.perf_counter() - start)


def pil_decode(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def torchvision_decode(path: Path) -> torch.Tensor:
    return torchvision.io.decode_image(torchvision.io.read_file(str(path)), mode=torchvision.io.ImageReadMode.RGB)


def loader_rate(dataset, workers: int, batch: int) -> float:
    """Samples per second through a DataLoader over the whole dataset (first batch excluded)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=workers, collate_fn=collate)
    it = iter(loader)
    next(it)
    start, count = time.perf_counter(), 0
    for b in it:
        count += b["image"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="nyud_mt", choices=list(DATASET_OF_LAYOUT))
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)  # workers are processes; keep the main process from competing
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / args.layout
        summary = write_layout(args.layout, root, args.n, val_fraction=0.0)
        files = sorted((root / IMAGE_FOLDER[args.layout]).iterdir())
        pil, tv = decode_rate(files, pil_decode), decode_rate(files, torchvision_decode)
        dataset = build_dataset(DATASET_OF_LAYOUT[args.layout], root=root, split="train", protocol="atrc")
        result = {"layout": args.layout, "samples": len(dataset), "image_size": f"{summary.height}x{summary.width}",
                  "decode_img_per_s": {"PIL": round(pil, 1), "torchvision.io": round(tv, 1),
                                       "ratio_torchvision_over_PIL": round(tv / pil, 3)},
                  "transform": dataset.transform.name,
                  "loader_samples_per_s": {str(w): round(loader_rate(dataset, w, args.batch), 1) for w in (0, 1, 2)}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
