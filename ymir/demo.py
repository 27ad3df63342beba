"""A built-in demo dataset: synthetic shapes laid out exactly as YMIR lays out a task's /in and /out.

`python -m ymir.demo ROOT --task training|mining|infer|mining+infer` writes ROOT/in and ROOT/out; then
`python start.py --in ROOT/in --out ROOT/out` runs the task on it.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import yaml

CLASS_NAMES = ("box", "disc", "triangle")
DEMO_TRAINING = {"epochs": 15, "img_size": 128, "batch_size_per_gpu": 16, "num_workers_per_gpu": 1,
                 "model": "yolov5n", "args_options": "--hyp warmup_epochs=0 mosaic=0 lr0=0.02"}
TASKS = ("training", "mining", "infer", "mining+infer")


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


def ark_text(boxes: Sequence[Tuple[int, int, int, int, int]]) -> str:
    return "".join(f"{c}, {x1}, {y1}, {x2}, {y2}, -1.0, 0.0\n" for c, x1, y1, x2, y2 in boxes)


def voc_text(image_path: str, width: int, height: int, boxes, class_names: Sequence[str]) -> str:
    objects = "".join(
        f"<object><name>{class_names[c]}</name><pose>unknown</pose><truncated>unknown</truncated>"
        f"<occluded>0</occluded><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
        f"<rotate_angle>0.0</rotate_angle></bndbox><difficult>0</difficult><confidence>-1.0</confidence></object>"
        for c, x1, y1, x2, y2 in boxes)
    return (f"<annotation><folder>folder</folder><filename>{image_path}</filename><source><database>unknown"
            f"</database></source><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objects}</annotation>")


def write_asset(in_dir: Path, data: bytes, ext: str = "jpg") -> str:
    """Store bytes as YMIR does (`assets/<last 2 hex>/<sha1>.<ext>`); return the container path."""
    sha1 = hashlib.sha1(data).hexdigest()
    rel = f"assets/{sha1[-2:]}/{sha1}.{ext}"
    (in_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    (in_dir / rel).write_bytes(data)
    return f"/in/{rel}"


def env_yaml(task: str, task_id: str) -> dict:
    run_training = task == "training"
    return {
        "protocol_version": "1.1.0",
        "task_id": task_id,
        "run_training": run_training,
        "run_mining": "mining" in task,
        "run_infer": "infer" in task,
        "input": {
            "root_dir": "/in", "assets_dir": "/in/assets", "annotations_dir": "/in/annotations",
            "models_dir": "/in/models", "config_file": "/in/config.yaml",
            "training_index_file": "/in/train-index.tsv" if run_training else "",
            "val_index_file": "/in/val-index.tsv" if run_training else "",
            "candidate_index_file": "" if run_training else "/in/candidate-index.tsv",
        },
        "output": {
            "root_dir": "/out", "models_dir": "/out/models", "tensorboard_dir": "/out/tensorboard",
            "training_result_file": "/out/models/result.yaml", "mining_result_file": "/out/result.tsv",
            "infer_result_file": "/out/infer-result.json", "monitor_file": "/out/monitor.txt",
            "executor_log_file": "/out/ymir-executor-out.log",
        },
    }


def make_workdir(root: Path, task: str = "training", num_train: int = 48, num_val: int = 16,
                 num_candidates: int = 16, image_size: Tuple[int, int] = (160, 192), seed: int = 0,
                 annotation_format: str = "ark", config: Optional[dict] = None,
                 task_id: str = "t0000001000001demo0001700000000") -> Path:
    """Write ROOT/in and ROOT/out for `task`; returns ROOT. `config` entries override config.yaml."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}")
    root = Path(root)
    in_dir, out_dir = root / "in", root / "out"
    for sub in ("models", "annotations"):
        (in_dir / sub).mkdir(parents=True, exist_ok=True)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "tensorboard").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    settings = {"task_id": task_id, "class_names": list(CLASS_NAMES), "gpu_id": "", "gpu_count": 0}
    if task == "training":
        settings.update(export_format=f"{annotation_format}:raw", shm_size="1G", epochs=2, img_size=160,
                        batch_size_per_gpu=8, num_workers_per_gpu=0, model="yolov5n")
        for split, count in (("train", num_train), ("val", num_val)):
            lines = []
            for _ in range(count):
                demo = draw_image(rng, image_size)
                image_path = write_asset(in_dir, demo.jpeg)
                sha1 = Path(image_path).stem
                ext = "txt" if annotation_format == "ark" else "xml"
                anno_rel = f"annotations/{sha1[-2:]}/{sha1}.{ext}"
                (in_dir / anno_rel).parent.mkdir(parents=True, exist_ok=True)
                text = ark_text(demo.boxes) if annotation_format == "ark" else voc_text(
                    image_path, image_size[1], image_size[0], demo.boxes, CLASS_NAMES)
                (in_dir / anno_rel).write_text(text)
                lines.append(f"{image_path}\t/in/{anno_rel}\n")
            (in_dir / f"{split}-index.tsv").write_text("".join(lines))
    else:
        lines = [write_asset(in_dir, draw_image(rng, image_size).jpeg) + "\n" for _ in range(num_candidates)]
        (in_dir / "candidate-index.tsv").write_text("".join(lines))
        settings.update(img_size=160, batch_size_per_gpu=4, num_workers_per_gpu=0,
                        model_params_path=["/in/models/best/best.pt"])
        if "mining" in task:
            settings.update(mining_algorithm="entropy", run_mining=True, run_infer="infer" in task)
    settings.update(config or {})
    (in_dir / "config.yaml").write_text(yaml.safe_dump(settings))
    (in_dir / "env.yaml").write_text(yaml.safe_dump(env_yaml(task, task_id)))
    (out_dir / "monitor.txt").write_text(f"{task_id}\t0\t0.00\t1\n")
    return root


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--task", choices=TASKS, default="training")
    parser.add_argument("--format", choices=("ark", "voc"), default="ark")
    parser.add_argument("--model", type=Path, help="for mining/infer: the trained stage folder to hand over "
                                                    "(copied to in/models/<stage>/ as YMIR does)")
    args = parser.parse_args(argv)
    if args.task == "training":
        # small images and large shapes, so that a few CPU minutes from scratch give a useful model
        make_workdir(args.root, "training", num_train=192, num_val=32, image_size=(128, 128), seed=3,
                     annotation_format=args.format, config=DEMO_TRAINING)
    else:
        make_workdir(args.root, args.task, num_candidates=32, image_size=(128, 128), seed=4,
                     config={"mining_algorithm": "aldd", "img_size": 128})
        if args.model:
            stage = args.root / "in" / "models" / args.model.name
            stage.mkdir(parents=True, exist_ok=True)
            for f in args.model.iterdir():
                shutil.copy(f, stage / f.name)
            (args.root / "in" / "config.yaml").write_text(yaml.safe_dump(dict(
                yaml.safe_load((args.root / "in" / "config.yaml").read_text()),
                model_params_path=[f"/in/models/{args.model.name}/{f.name}" for f in sorted(args.model.iterdir())])))
    print(f"demo {args.task} workdir written to {args.root}/in and {args.root}/out")


if __name__ == "__main__":
    main()
