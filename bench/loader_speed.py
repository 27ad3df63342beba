"""The training loader on its own: images per second through the trainer's DataLoader (mosaic, perspective, HSV,
flips at YOLOv5's scratch-low settings) with its workers kept for the whole run, epoch by epoch, without a cache
and with `--cache ram` / `--cache disk`, each in a fresh process on the same generated JPEGs (640 x 480, so every
image is decoded and resized at 640 px). Reported: each epoch's images/s, the second epoch against the first and
against the uncached second epoch, the time to fill the cache, and the process's peak memory (ru_maxrss) beside
the cache's size.

    .venv/bin/python bench/loader_speed.py [--images 256] [--size 640] [--workers 1] [--epochs 3] [--batch 16]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def prepare(folder: Path, count: int) -> None:
    from ymir.local.demo import draw_image

    rng = np.random.default_rng(0)
    for i in range(count):
        (folder / f"{i:05d}.jpg").write_bytes(draw_image(rng, (480, 640), 3).jpeg)


def measure(folder: Path, cache: str, size: int, workers: int, epochs: int, batch: int) -> dict:
    """One configuration, in this process: images/s of each epoch (the cache's fill timed apart)."""
    import torch
    from torch.utils.data import DataLoader

    from utils.data.image_cache import resized_bytes
    from utils.data.sample import Sample
    from utils.data.train_data import EpochIndices, EpochShuffle, TrainImages, collate_train
    from utils.hyperparameters import SCRATCH_LOW

    torch.set_num_threads(1)
    box = np.array([[100, 100, 300, 260]], dtype=np.float32)
    samples = [Sample(p, 640, 480, 1, box, np.zeros(1, dtype=np.int64)) for p in sorted(folder.glob("*.jpg"))]
    dataset = TrainImages(samples, size, dict(SCRATCH_LOW), seed=0)
    started = time.perf_counter()
    if cache:
        dataset.images.use_cache(cache)
    fill = time.perf_counter() - started
    sampler = EpochShuffle(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochIndices(sampler, dataset), num_workers=workers,
                        collate_fn=collate_train, persistent_workers=workers > 0)
    rates = []
    for epoch in range(epochs):
        dataset.epoch = epoch
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        for _ in loader:
            pass
        rates.append(len(dataset) / (time.perf_counter() - started))
    if dataset.images.cache is not None:
        dataset.images.cache.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"cache": cache or "none", "fill_s": fill, "rates": rates, "peak_bytes": peak,
            "cache_bytes": resized_bytes(samples, size) if cache else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--one", nargs=2, metavar=("FOLDER", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        cache = "" if args.one[1] == "none" else args.one[1]
        print(json.dumps(measure(Path(args.one[0]), cache, args.size, args.workers, args.epochs, args.batch)))
        return
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        prepare(Path(tmp), args.images)
        results = {}
        for cache in ("none", "ram", "disk"):
            out = subprocess.run([sys.executable, __file__, "--one", tmp, cache, "--size", str(args.size),
                                  "--workers", str(args.workers), "--epochs", str(args.epochs),
                                  "--batch", str(args.batch)], capture_output=True, text=True, check=True,
                                 cwd=str(REPO))
            results[cache] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n{args.images} images of 640 x 480 at {args.size} px, mosaic on, batch {args.batch}, {args.workers} "
          f"worker(s) kept for the run, {args.epochs} epochs; images/s per epoch\n")
    print("| cache | fill before epoch 1 (s) | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs))
          + " | epoch 2 / epoch 1 | epoch 2 / uncached epoch 2 | cache size | peak RSS |")
    print("|---|---|" + "---|" * args.epochs + "---|---|---|---|")
    base = results["none"]["rates"][1] if args.epochs > 1 else float("nan")
    for cache, r in results.items():
        rates = r["rates"]
        second = rates[1] if len(rates) > 1 else float("nan")
        print(f"| {cache} | {r['fill_s']:.1f} | " + " | ".join(f"{v:.1f}" for v in rates)
              + f" | {second / rates[0]:.2f}x | {second / base:.2f}x | {r['cache_bytes'] / 1e6:.0f} MB | "
              f"{r['peak_bytes'] / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
