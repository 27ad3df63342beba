"""Training: our engine against the original YOLOv5 v7.0 (PyPI yolov5==7.0.14) on the same generated dataset.

Same images and labels (192 train / 32 val synthetic shapes at 128 px), same architecture (yolov5n from
scratch), epochs, batch, image size, seed and hyper-parameters (hyp.scratch-low with mosaic off and lr0 0.02,
which a few CPU epochs need; YOLOv5's warm-up of at least 100 batches on both sides). Ours runs as the executor
(`start.py` on a YMIR task folder), the original through its own `train.run`. Reports the best mAP@0.5 /
mAP@0.5:0.95 of each and the wall time of the whole process (start-up, data reading, training, validation,
saving). Both sides are deterministic for a seed; seeds differ in data, initial weights and augmentation.

    .venv/bin/python bench/train_vs_oracle.py [--seeds 5] [--epochs 30]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from utils.hyperparameters import SCRATCH_LOW
from ymir.local.demo import CLASS_NAMES, draw_image
from ymir.local.task_folder import ark_text, env_yaml, write_asset

REPO = Path(__file__).resolve().parent.parent
HYP_CHANGES = {"mosaic": 0.0, "lr0": 0.02}
ORACLE_TRAIN = """
import sys
sys.path.insert(0, {oracle_dir!r})
import oracle_tool  # offline set-up of the original
from yolov5 import train

train.run(data={data!r}, cfg="yolov5n.yaml", weights="", hyp={hyp!r}, epochs={epochs}, imgsz={size},
          batch_size={batch}, workers=1, seed={seed}, noplots=True, project={project!r}, name="run",
          exist_ok=True, device="cpu")
"""


def dataset(seed: int, train: int, val: int, size: int):
    rng = np.random.default_rng(seed)
    return ([draw_image(rng, (size, size)) for _ in range(train)], [draw_image(rng, (size, size)) for _ in range(val)])


def write_ymir(root: Path, splits, config: dict) -> Path:
    in_dir = root / "in"
    for d in (in_dir / "models", root / "out" / "models", root / "out" / "tensorboard"):
        d.mkdir(parents=True, exist_ok=True)
    for name, items in zip(("train", "val"), splits):
        lines = []
        for item in items:
            image = write_asset(in_dir, item.jpeg)
            sha1 = Path(image).stem
            anno = in_dir / "annotations" / f"{sha1}.txt"
            anno.parent.mkdir(parents=True, exist_ok=True)
            anno.write_text(ark_text(item.boxes))
            lines.append(f"{image}\t/in/annotations/{sha1}.txt\n")
        (in_dir / f"{name}-index.tsv").write_text("".join(lines))
    task_id = "t" + "0" * 30
    (in_dir / "config.yaml").write_text(yaml.safe_dump(dict(config, task_id=task_id, class_names=list(CLASS_NAMES),
                                                            gpu_id="", gpu_count=0, export_format="ark:raw")))
    (in_dir / "env.yaml").write_text(yaml.safe_dump(env_yaml("training", task_id)))
    return root


def write_yolo(root: Path, splits, size: int) -> Path:
    for name, items in zip(("train", "val"), splits):
        (root / "images" / name).mkdir(parents=True)
        (root / "labels" / name).mkdir(parents=True)
        for i, item in enumerate(items):
            (root / "images" / name / f"{i:05d}.jpg").write_bytes(item.jpeg)
            img = cv2.imdecode(np.frombuffer(item.jpeg, np.uint8), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            rows = [f"{c} {(x1 + x2 + 1) / 2 / w:.6f} {(y1 + y2 + 1) / 2 / h:.6f} {(x2 + 1 - x1) / w:.6f} "
                    f"{(y2 + 1 - y1) / h:.6f}\n" for c, x1, y1, x2, y2 in item.boxes]
            (root / "labels" / name / f"{i:05d}.txt").write_text("".join(rows))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "nc": len(CLASS_NAMES), "names": list(CLASS_NAMES)}))
    return data


def best_of(results_csv: Path):
    rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(results_csv.open())]
    best = max(rows, key=lambda r: (float(r["metrics/mAP_0.5"]), float(r["metrics/mAP_0.5:0.95"])))
    return float(best["metrics/mAP_0.5"]), float(best["metrics/mAP_0.5:0.95"])


def original_environment() -> dict:
    """The original's process: without our PYTHONPATH (a checkout there would answer its `models.yolo` when it
    loads its own best.pt), reading its own checkpoints as it was written to."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return dict(env, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")


def run(command, **kwargs) -> None:
    """A side's whole run; its own last words when it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise SystemExit(f"{command[1] if len(command) > 1 else command[0]} failed ({done.returncode}):\n"
                         f"{(done.stdout + done.stderr)[-4000:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        tmp = Path(tmp)
        hyp = tmp / "hyp.yaml"
        hyp.write_text(yaml.safe_dump({**SCRATCH_LOW, **HYP_CHANGES}))
        for seed in range(args.seeds):
            splits = dataset(3 + seed, 192, 32, args.size)
            hyp_options = " ".join(f"{k}={v}" for k, v in HYP_CHANGES.items())
            work = write_ymir(tmp / f"ours{seed}", splits, {
                "model": "yolov5n", "epochs": args.epochs, "img_size": args.size, "batch_size_per_gpu": args.batch,
                "num_workers_per_gpu": 1, "args_options": f"--hyp {hyp_options} --seed {seed}"})
            t = time.perf_counter()
            run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "start.py"), "--in", str(work / "in"), "--out",
                 str(work / "out")])
            ours_time = time.perf_counter() - t
            ours = best_of(work / "out" / "tensorboard" / "results.csv")
            data = write_yolo(tmp / f"yolo{seed}", splits, args.size)
            script = ORACLE_TRAIN.format(oracle_dir=str(REPO / "tests" / "oracle"), data=str(data), hyp=str(hyp),
                                         epochs=args.epochs, size=args.size, batch=args.batch, seed=seed,
                                         project=str(tmp / f"oracle{seed}"))
            t = time.perf_counter()
            run([str(REPO / ".venvs" / "oracle" / "bin" / "python"), "-c", script], cwd=str(tmp),
                env=original_environment())
            oracle_time = time.perf_counter() - t
            oracle = best_of(tmp / f"oracle{seed}" / "run" / "results.csv")
            rows.append((seed, ours, oracle, ours_time, oracle_time))
            print(f"seed {seed}: ours {ours} in {ours_time:.0f} s, oracle {oracle} in {oracle_time:.0f} s", flush=True)
    print(f"\nyolov5n from scratch, {args.epochs} epochs, {args.size} px, batch {args.batch}, 192 train / 32 val\n")
    print("| seed | ours mAP@0.5 | oracle mAP@0.5 | ours mAP@0.5:0.95 | oracle mAP@0.5:0.95 | ours s | oracle s | "
          "time ratio (oracle / ours) |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, ours, oracle, ot, rt in rows:
        print(f"| {seed} | {ours[0]:.4f} | {oracle[0]:.4f} | {ours[1]:.4f} | {oracle[1]:.4f} | {ot:.0f} | {rt:.0f} | "
              f"{rt / ot:.2f}x |")
    print(f"| mean | {np.mean([r[1][0] for r in rows]):.4f} | {np.mean([r[2][0] for r in rows]):.4f} | "
          f"{np.mean([r[1][1] for r in rows]):.4f} | {np.mean([r[2][1] for r in rows]):.4f} | "
          f"{np.mean([r[3] for r in rows]):.0f} | {np.mean([r[4] for r in rows]):.0f} | "
          f"{np.mean([r[4] for r in rows]) / np.mean([r[3] for r in rows]):.2f}x |")


if __name__ == "__main__":
    main()
