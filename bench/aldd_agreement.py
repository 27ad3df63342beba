"""How closely does ALDD's cheap `native` computation rank images like the reference's `input` computation?

A trained detector (any checkpoint the executor reads; e.g. a mining_bench.py source model kept with
--source-cache) scores a generated pool of the mining benchmark (shapes on two backgrounds) at each image size;
the table gives the Spearman rank correlation over the pool between the input-resolution score and the native
score with each level weighted by (s_min / s) ** power (power 0: equal weights; the product uses
ymir.mining.aldd.LEVEL_POWER).

    .venv/bin/python bench/aldd_agreement.py --weights DIR/best/best.pt [--images 300] [--sizes 160,320]
                                             [--powers 0,1,2,3]
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from mining_eval import spearman
from mining_pool import draw

from utils.checkpoint import build_model, read_checkpoint
from utils.data.letterboxed import LetterboxedImages, collate
from utils.inference import make_detector
from ymir.mining.aldd import LEVEL_POWER, aldd_scores_input, aldd_scores_native, class_weights

REPO = Path(__file__).resolve().parent.parent


def numbers(text: str, kind=float):
    return [kind(x) for x in text.split(",")]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--shift", type=float, default=0.3)
    parser.add_argument("--sizes", type=lambda t: numbers(t, int), default=[160, 320])
    parser.add_argument("--powers", type=numbers, default=[0.0, 1.0, 2.0, 3.0])
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ckpt = read_checkpoint(args.weights)
    rng = np.random.default_rng(5)
    pool = [draw(rng, args.shift) for _ in range(args.images)]
    weights = class_weights([], ckpt.nc)
    print(f"{args.weights}: {args.images} generated images (shifted share {args.shift}); product power "
          f"{LEVEL_POWER:g}\n")
    print("| image size | " + " | ".join(f"power {p:g}" for p in args.powers) + " |")
    print("|---|" + "---|" * len(args.powers))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, item in enumerate(pool):
            paths.append(Path(tmp) / f"{i}.jpg")
            paths[-1].write_bytes(item.jpeg)
        for size in args.sizes:
            detector = make_detector(build_model(ckpt), torch.device("cpu"), size)
            images = LetterboxedImages(paths, size)
            reference, native = [], {p: [] for p in args.powers}
            with torch.inference_mode():
                for start in range(0, len(images), args.batch):
                    batch, _ = collate([images[i] for i in range(start, min(len(images), start + args.batch))])
                    _, levels = detector(batch)  # the raw maps; ALDD needs no NMS
                    input_size = (batch.shape[2], batch.shape[3])
                    reference += aldd_scores_input(levels, input_size, weights).tolist()
                    for p in args.powers:
                        native[p] += aldd_scores_native(levels, input_size, weights, p).tolist()
            reference = np.array(reference)
            print(f"| {size} | " + " | ".join(f"{spearman(np.array(native[p]), reference):.3f}"
                                              for p in args.powers) + " |", flush=True)


if __name__ == "__main__":
    main()
