"""The training loader on its own: images per second through the trainer's DataLoader (mosaic, perspective, HSV,
flips at YOLOv5's scratch-low settings) with its workers kept for the whole run, epoch by epoch, without a cache
and with `--cache ram` / `--cache disk`, each in a fresh process on the same generated JPEGs (640 x 480, so every
image is decoded and resized at 640 px). Reported: each epoch's images/s, the second epoch against the first and
against the uncached second epoch, the time to fill the cache, and the process's peak memory (ru_maxrss) beside
the cache's size.

With --original, the original YOLOv5 v7.0's own loader (PyPI yolov5==7.0.14, `create_dataloader` over
`LoadImagesAndLabels`, in .venvs/oracle) reads the same images and labels with the same batch, workers, image
size and hyper-parameters, without a cache and with its `--cache ram`; each configuration of each side runs
--repeats times, the sides alternating, and the table gives medians and our images/s over the original's.

    .venv/bin/python bench/loader_speed.py [--images 256] [--size 640] [--workers 1] [--epochs 3] [--batch 16]
                                           [--original] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parent.parent


BOX = (100, 100, 300, 260)  # one box per image, class 1, in the 640 x 480 pixels of every generated image
ORACLE_PYTHON = REPO / ".venvs" / "oracle" / "bin" / "python"
ORIGINAL_LOADER = """
import json, resource, sys, time
sys.path.insert(0, {oracle_dir!r})
import oracle_tool  # offline set-up of the original
import torch, yaml
from pathlib import Path
import yolov5
from yolov5.utils.dataloaders import create_dataloader

torch.set_num_threads(1)
hyp = yaml.safe_load((Path(yolov5.__file__).parent / "data/hyps/hyp.scratch-low.yaml").read_text())
started = time.perf_counter()
loader, dataset = create_dataloader({images!r}, {size}, {batch}, 32, hyp=hyp, augment=True, cache={cache!r},
                                    workers={workers}, shuffle=True, seed=0)
fill = time.perf_counter() - started
rates = []
for epoch in range({epochs}):
    started = time.perf_counter()
    for _ in loader:
        pass
    rates.append(len(dataset) / (time.perf_counter() - started))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"cache": {cache!r} or "none", "opencv": __import__("cv2").__version__, "fill_s": fill,
                  "rates": rates, "peak_bytes": peak,
                  "cache_bytes": 0}}))
"""


def prepare(folder: Path, count: int) -> Path:
    """The JPEGs under folder/images and their YOLO labels under folder/labels (the original finds them there)."""
    from ymir.local.demo import draw_image

    images, labels = folder / "images", folder / "labels"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    x1, y1, x2, y2 = BOX
    label = f"1 {(x1 + x2) / 2 / 640:.6f} {(y1 + y2) / 2 / 480:.6f} {(x2 - x1) / 640:.6f} {(y2 - y1) / 480:.6f}\n"
    for i in range(count):
        (images / f"{i:05d}.jpg").write_bytes(draw_image(rng, (480, 640), 3).jpeg)
        (labels / f"{i:05d}.txt").write_text(label)
    return images


def measure(folder: Path, cache: str, size: int, workers: int, epochs: int, batch: int) -> dict:
    """One configuration, in this process: images/s of each epoch (the cache's fill timed apart)."""
    import cv2
    import torch
    from torch.utils.data import DataLoader

    from utils.data.image_cache import resized_bytes
    from utils.data.loader_workers import init_loader_worker
    from utils.data.sample import Sample
    from utils.data.train_data import EpochIndices, EpochShuffle, TrainImages, collate_train
    from utils.hyperparameters import SCRATCH_LOW

    torch.set_num_threads(1)
    box = np.array([BOX], dtype=np.float32)
    samples = [Sample(p, 640, 480, 1, box, np.zeros(1, dtype=np.int64)) for p in sorted(folder.glob("*.jpg"))]
    dataset = TrainImages(samples, size, dict(SCRATCH_LOW), seed=0)
    started = time.perf_counter()
    if cache:
        dataset.images.use_cache(cache)
    fill = time.perf_counter() - started
    sampler = EpochShuffle(len(dataset), seed=0)
    loader = DataLoader(dataset, batch_size=batch, sampler=EpochIndices(sampler, dataset), num_workers=workers,
                        collate_fn=collate_train, persistent_workers=workers > 0, worker_init_fn=init_loader_worker)
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
    return {"cache": cache or "none", "opencv": cv2.__version__, "fill_s": fill, "rates": rates, "peak_bytes": peak,
            "cache_bytes": resized_bytes(samples, size) if cache else 0}


def run_ours(images: str, cache: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", images, cache, "--size", str(args.size),
                          "--workers", str(args.workers), "--epochs", str(args.epochs), "--batch", str(args.batch)],
                         capture_output=True, text=True, check=True, cwd=str(REPO))
    return json.loads(out.stdout.strip().splitlines()[-1])


def our_opencv_path(folder: Path) -> str:
    """A folder holding links to this venv's OpenCV (the package and its bundled libraries), which put first on the
    original's PYTHONPATH makes it run our pinned OpenCV in place of the one its own venv resolved."""
    import cv2

    package = Path(cv2.__file__).resolve().parent
    folder.mkdir(exist_ok=True)
    for path in [package, *package.parent.glob("opencv_python*.libs")]:
        (folder / path.name).symlink_to(path)
    return str(folder)


def run_original(images: str, cache: str, args, opencv_path: str = "") -> dict:
    script = ORIGINAL_LOADER.format(oracle_dir=str(REPO / "tests" / "oracle"), images=images, size=args.size,
                                    batch=args.batch, cache="" if cache == "none" else cache,
                                    workers=args.workers, epochs=args.epochs)
    env = dict(os.environ, PYTHONPATH=opencv_path) if opencv_path else None
    out = subprocess.run([str(ORACLE_PYTHON), "-c", script], capture_output=True, text=True, cwd=images, env=env)
    if out.returncode != 0:
        raise SystemExit(f"the original's loader failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(runs: List[dict]) -> dict:
    """Per epoch, the median images/s over the repeats; the other figures of the median second epoch's run."""
    middle = sorted(runs, key=lambda r: r["rates"][min(1, len(r["rates"]) - 1)])[len(runs) // 2]
    return dict(middle, rates=[statistics.median(r["rates"][e] for r in runs) for e in range(len(runs[0]["rates"]))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--original", action="store_true", help="the original YOLOv5's loader beside ours")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration (medians reported)")
    parser.add_argument("--same-opencv", action="store_true",
                        help="the original runs this venv's OpenCV (ours is pinned; its venv resolves another): "
                             "the code's own difference, without the library's")
    parser.add_argument("--one", nargs=2, metavar=("FOLDER", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        cache = "" if args.one[1] == "none" else args.one[1]
        print(json.dumps(measure(Path(args.one[0]), cache, args.size, args.workers, args.epochs, args.batch)))
        return
    runs: Dict[Tuple[str, str], List[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        images = str(prepare(Path(tmp), args.images))
        opencv_path = our_opencv_path(Path(tmp) / "opencv") if args.same_opencv else ""
        for _ in range(args.repeats):  # the sides alternate, so that a change in the machine's load hits both
            for cache in ("none", "ram", "disk"):
                runs.setdefault(("ours", cache), []).append(run_ours(images, cache, args))
                if args.original and cache != "disk":  # the original's disk cache writes .npy beside the images
                    runs.setdefault(("original", cache), []).append(run_original(images, cache, args, opencv_path))
    results = {key: median_run(value) for key, value in runs.items()}
    opencv = {side: r.get("opencv") for (side, _), r in results.items()}
    second = min(1, args.epochs - 1)  # the epoch compared: the second, the first of a cache already filled
    print(f"\n{args.images} images of 640 x 480 at {args.size} px, mosaic on, batch {args.batch}, {args.workers} "
          f"worker(s) kept for the run, {args.epochs} epochs, median of {args.repeats}; images/s per epoch; OpenCV "
          f"{', '.join(f'{side} {version}' for side, version in opencv.items())}\n")
    print("| loader | cache | set-up before epoch 1 (s) | " + " | ".join(f"epoch {e + 1}" for e in range(args.epochs))
          + " | epoch 2 / epoch 1 | epoch 2 / uncached epoch 2 | ours / original (epoch 2) | cache size | peak RSS |")
    print("|---|---|---|" + "---|" * args.epochs + "---|---|---|---|---|")
    for (side, cache), r in results.items():
        rates = r["rates"]
        uncached = results[(side, "none")]["rates"][second]
        original = results.get(("original", cache))
        against = f"{rates[second] / original['rates'][second]:.2f}x" if side == "ours" and original else ""
        size = f"{r['cache_bytes'] / 1e6:.0f} MB" if r["cache_bytes"] else ""
        print(f"| {side} | {cache} | {r['fill_s']:.1f} | " + " | ".join(f"{v:.1f}" for v in rates)
              + f" | {rates[second] / rates[0]:.2f}x | {rates[second] / uncached:.2f}x | {against} | {size} | "
              f"{r['peak_bytes'] / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
