"""How much training is enough: the demo's data trained from scratch for a number of epochs and images, and judged.

Each recipe trains yolov5n from scratch through `start.py` on the demo's generated shapes (at the recipe's size, the
demo's hyper-parameters unless `--set` changes them), then predicts the demo's 32 candidates with the best stage and
compares them with the shapes drawn in them. Reported per recipe: validation mAP@0.5 and mAP@0.5:0.95, the shapes
found (IoU >= 0.5, right class) out of those drawn, the share of predicted boxes that are right, the most boxes on
one image, and the training task's wall time. Seeds change the data, the initial weights and the augmentation.

    .venv/bin/python bench/training_budget.py [--recipes 15x192 30x192@96 ...] [--seeds 0 1] [--set key=value ...]

A recipe EPOCHSxIMAGES[xBATCH][@SIZE] (batch and size default to the demo's); `--set` changes the demo's training
config for every recipe (e.g. `--set "args_options=--hyp warmup_epochs=0 mosaic=0 lr0=0.02"`). YOLOv5 accumulates
gradients up to a nominal batch of 64 (after its warm-up, which steps more often), so the optimizer steps about
once per 64 images seen whatever the batch.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from ymir.local.demo import DEMO_TRAINING, TRUTH_FILE, make_workdir
from ymir.local.demo_summary import matched, predictions
from ymir.local.task_folder import parse_settings

REPO = Path(__file__).resolve().parent.parent


def run_task(work: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "start.py"), "--in", str(work / "in"), "--out", str(work / "out")],
                   check=True, capture_output=True)
    return time.perf_counter() - started


def judge(mine: Path) -> dict:
    truth = json.loads((mine / TRUTH_FILE).read_text())
    predicted = predictions(mine / "out" / "infer-result.json")
    per_image = [predicted.get(Path(path).name, []) for path in truth]
    found = sum(matched([tuple(t) for t in truth[path]], boxes) for path, boxes in zip(truth, per_image))
    shown = sum(map(len, per_image))
    return {"drawn": sum(map(len, truth.values())), "found": found, "boxes": shown,
            "right_share": found / shown if shown else 0.0, "most_on_one_image": max(map(len, per_image))}


def run_recipe(root: Path, epochs: int, images: int, batch: int, size: int, seed: int, changes: dict) -> dict:
    config = {**DEMO_TRAINING, **changes, "epochs": epochs, "batch_size_per_gpu": batch, "img_size": size}
    if seed:
        config["args_options"] = f"{config.get('args_options', '')} --seed {seed}".strip()
    train = make_workdir(root / "train", "training", num_train=images, num_val=32, image_size=(size, size),
                         seed=3 + seed, config=config)
    seconds = run_task(train)
    result = yaml.safe_load((train / "out" / "models" / "result.yaml").read_text())
    best = result["model_stages"][result["best_stage_name"]]
    mine = make_workdir(root / "mine", "mining+infer", num_candidates=32, image_size=(size, size), seed=4,
                        config={"mining_algorithm": "aldd", "img_size": size},
                        model_stage=train / "out" / "models" / result["best_stage_name"])
    run_task(mine)
    return {"epochs": epochs, "images": images, "batch": batch, "size": size, "seed": seed, "mAP50": best["mAP"],
            "mAP50_95": best["mAP50_95"], "train_seconds": seconds, **judge(mine)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["15x192", "30x192", "60x192", "30x96", "30x384"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", nargs="*", default=[], dest="changes")
    args = parser.parse_args()
    changes = parse_settings(args.changes)
    rows = []
    with tempfile.TemporaryDirectory(prefix="training-budget-") as tmp:
        for recipe in args.recipes:
            counts, _, size = recipe.partition("@")
            epochs, images, batch = (list(map(int, counts.split("x"))) + [DEMO_TRAINING["batch_size_per_gpu"]])[:3]
            for seed in args.seeds:
                row = run_recipe(Path(tmp) / f"{recipe}-{seed}", epochs, images, batch,
                                 int(size or DEMO_TRAINING["img_size"]), seed, changes)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nyolov5n from scratch on the demo's shapes; changes: {changes or 'none'}; seeds {args.seeds}\n")
    print("| px | epochs | images | batch | images seen | mAP@0.5 | mAP@0.5:0.95 | shapes found | boxes right | "
          "most boxes on one image | training time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe in dict.fromkeys((r["size"], r["epochs"], r["images"], r["batch"]) for r in rows):
        same = [r for r in rows if (r["size"], r["epochs"], r["images"], r["batch"]) == recipe]
        mean = {key: float(np.mean([r[key] for r in same])) for key in
                ("mAP50", "mAP50_95", "found", "drawn", "right_share", "train_seconds")}
        print(f"| {recipe[0]} | {recipe[1]} | {recipe[2]} | {recipe[3]} | {recipe[1] * recipe[2]:,} | "
              f"{mean['mAP50']:.3f} | {mean['mAP50_95']:.3f} | "
              f"{100 * mean['found'] / mean['drawn']:.0f} % | {100 * mean['right_share']:.0f} % | "
              f"{max(r['most_on_one_image'] for r in same)} | {mean['train_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
