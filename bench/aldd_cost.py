"""What ALDD's scoring costs next to the forward pass it scores, for both of its resolutions.

yolov5n with random weights (the cost does not depend on them), uint8 batches through the product's detector
for this machine (`utils.inference.make_detector`: onnxruntime on a CPU), then `aldd_scores` on the raw maps of
that batch. Minimum over repeats, per image; the ratio is ALDD's extra time over the forward pass (the target
"ALDD at most 1.5x plain inference" means a ratio of at most 0.5). The process keeps freed memory for reuse as
the executor does (`utils.malloc`); --default-malloc measures glibc's defaults instead.

    .venv/bin/python bench/aldd_cost.py [--repeats 5] [--input-resolution] [--default-malloc]
"""
import argparse
import time
from pathlib import Path

import torch

from models.yolo import DetectionModel
from utils.inference import make_detector
from utils.malloc import keep_freed_memory
from ymir.mining.aldd import aldd_scores, class_weights

REPO = Path(__file__).resolve().parent.parent

CASES = [(160, 4, 16), (320, 20, 8), (640, 80, 8)]  # image size, classes, batch


def best_ms_per_image(fn, batch: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / batch * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--input-resolution", action="store_true",
                        help="also time the reference's input-resolution ALDD (slow: minutes at 640 px)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc thresholds as they are (the executor changes them)")
    args = parser.parse_args()
    if not args.default_malloc:
        keep_freed_memory()
    torch.set_num_threads(2)
    print("| size | classes | batch | forward ms/img | aldd native ms/img | extra vs forward |"
          + (" aldd input ms/img | extra vs forward |" if args.input_resolution else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if args.input_resolution else ""))
    for size, nc, batch in CASES:
        print(measure(size, nc, batch, args.repeats, args.input_resolution), flush=True)


def measure(size: int, nc: int, batch: int, repeats: int, input_resolution: bool) -> str:
    torch.manual_seed(0)
    detector = make_detector(DetectionModel("yolov5n", nc=nc), torch.device("cpu"), size)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    weights = class_weights([], nc)
    with torch.inference_mode():
        _, levels = detector(images)
        forward = best_ms_per_image(lambda: detector(images), batch, repeats)
        native = best_ms_per_image(lambda: aldd_scores(levels, (size, size), weights, "native"), batch, repeats)
        row = f"| {size} | {nc} | {batch} | {forward:.2f} | {native:.3f} | {native / forward:.2f}x |"
        if input_resolution:
            full = best_ms_per_image(lambda: aldd_scores(levels, (size, size), weights, "input"), batch, 1)
            row += f" {full:.1f} | {full / forward:.1f}x |"
    return row


if __name__ == "__main__":
    main()
