"""A built-in demo dataset: synthetic shapes laid out exactly as YMIR lays out a task's /in and /out.

`python -m ymir.local.demo ROOT --task training|mining|infer|mining+infer` writes ROOT/in and ROOT/out (and, for the
candidates of mining and inference, the shapes drawn in them: ROOT/truth.json); then
`python start.py --in ROOT/in --out ROOT/out` runs the task on it. `python -m ymir.local.demo DEMO_DIR --summary` reads
what `tools/demo.sh` made under DEMO_DIR and prints its summary, with a picture of the first candidates.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np

from ymir.local.task_folder import TASKS, LabelledImage, write_task_folder

CLASS_NAMES = ("box", "disc", "triangle")
# The demo's recipe, chosen by bench/training_budget.py (bench/RESULTS.md): small images of large shapes, and
# enough optimizer steps (YOLOv5 steps once per 64 images seen) for a model trained from scratch to find most
# shapes within about two minutes of an idle 2-core CPU.
DEMO_SIZE = 64
DEMO_TRAIN_IMAGES = 384
DEMO_TRAINING = {"epochs": 48, "img_size": DEMO_SIZE, "batch_size_per_gpu": 64, "num_workers_per_gpu": 1,
                 "model": "yolov5n", "args_options": "--hyp warmup_epochs=0 mosaic=0 lr0=0.02"}


TRUTH_FILE = "truth.json"


@dataclass
class DemoImage:
    jpeg: bytes
    boxes: List[Tuple[int, int, int, int, int]]  # class, xmin, ymin, xmax, ymax (inclusive)


def draw_image(rng: np.random.Generator, size: Tuple[int, int], max_objects: int = 3) -> DemoImage:
    """Noisy background with 0..max_objects large, high-contrast shapes that do not overlap much."""
    height, width = size
    img = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    boxes = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        side = int(rng.integers(min(height, width) // 5, min(height, width) // 2))
        x1 = int(rng.integers(0, width - side))
        y1 = int(rng.integers(0, height - side))
        x2, y2 = x1 + side - 1, y1 + side - 1
        if any(_overlap((x1, y1, x2, y2), b[1:]) > 0.3 for b in boxes):
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if sum(colour) > 300:
            colour = tuple(c // 3 for c in colour)
        if cls == 0:
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, thickness=-1)
        elif cls == 1:
            cv2.circle(img, ((x1 + x2) // 2, (y1 + y2) // 2), side // 2, colour, thickness=-1)
        else:
            points = np.array([[(x1 + x2) // 2, y1], [x1, y2], [x2, y2]], dtype=np.int32)
            cv2.fillPoly(img, [points], colour)
        boxes.append((cls, x1, y1, x2, y2))
    ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return DemoImage(encoded.tobytes(), boxes)


def _overlap(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max(1, min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])))


def make_workdir(root: Path, task: str = "training", num_train: int = 48, num_val: int = 16,
                 num_candidates: int = 16, image_size: Tuple[int, int] = (160, 192), seed: int = 0,
                 annotation_format: str = "ark", config: Optional[dict] = None,
                 task_id: str = "t0000001000001demo0001700000000", model_stage: Optional[Path] = None) -> Path:
    """Write ROOT/in and ROOT/out for `task` with synthetic images; returns ROOT. `config` entries override
    config.yaml; `model_stage` (mining, inference) is a stage folder handed over as the model."""
    rng = np.random.default_rng(seed)

    def draw(count: int) -> List[LabelledImage]:
        return [LabelledImage(d.jpeg, d.boxes, image_size[1], image_size[0]) for d in
                (draw_image(rng, image_size) for _ in range(count))]

    if task == "training":
        settings = dict(shm_size="1G", epochs=2, img_size=160, batch_size_per_gpu=8, num_workers_per_gpu=0,
                        model="yolov5n")
        train, val = draw(num_train), draw(num_val)  # drawn in this order: the demo's data stay as they were
        write_task_folder(root, task, CLASS_NAMES, train=train, val=val, annotation_format=annotation_format,
                          config={**settings, **(config or {})}, task_id=task_id)
    else:
        settings = dict(img_size=160, batch_size_per_gpu=4, num_workers_per_gpu=0)
        if model_stage is None:  # the caller puts a model there
            settings["model_params_path"] = ["/in/models/best/best.pt"]
        if "mining" in task:
            settings.update(mining_algorithm="entropy", run_mining=True, run_infer="infer" in task)
        candidates = draw(num_candidates)
        write_task_folder(root, task, CLASS_NAMES, candidates=candidates, model_stage=model_stage,
                          config={**settings, **(config or {})}, task_id=task_id)
        write_truth(Path(root) / TRUTH_FILE, candidates)
    (Path(root) / "out" / "monitor.txt").write_text(f"{task_id}\t0\t0.00\t1\n")
    return Path(root)


def write_truth(path: Path, images: List[LabelledImage]) -> None:
    """The shapes drawn in each candidate, keyed by its path in the task (as result.tsv names it)."""
    truth = {f"/in/assets/{sha1[-2:]}/{sha1}.jpg": [[CLASS_NAMES[c], x1, y1, x2, y2] for c, x1, y1, x2, y2 in
                                                     image.boxes]
             for image, sha1 in ((image, hashlib.sha1(image.data).hexdigest()) for image in images)}
    path.write_text(json.dumps(truth, indent=0))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--task", choices=TASKS, default="training")
    parser.add_argument("--format", choices=("ark", "voc"), default="ark")
    parser.add_argument("--model", type=Path, help="for mining/infer: the trained stage folder to hand over "
                                                    "(copied to in/models/<stage>/ as YMIR does)")
    parser.add_argument("--summary", action="store_true", help="print the summary of what tools/demo.sh made "
                                                                "under ROOT and draw its first candidates")
    parser.add_argument("--seconds", type=float, default=0.0, help="with --summary: the demo's total time")
    args = parser.parse_args(argv)
    if args.summary:
        from ymir.local.demo_summary import (
            summary,  # the summary's imports (torch, the plots) only where it is asked for
        )

        print("\n".join(summary(args.root, args.seconds)))
        return
    if args.task == "training":
        make_workdir(args.root, "training", num_train=DEMO_TRAIN_IMAGES, num_val=32, image_size=(DEMO_SIZE, DEMO_SIZE),
                     seed=3, annotation_format=args.format, config=DEMO_TRAINING)
    else:
        make_workdir(args.root, args.task, num_candidates=32, image_size=(DEMO_SIZE, DEMO_SIZE), seed=4,
                     config={"mining_algorithm": "aldd", "img_size": DEMO_SIZE}, model_stage=args.model)
    print(f"demo {args.task} workdir written to {args.root}/in and {args.root}/out")


if __name__ == "__main__":
    main()
