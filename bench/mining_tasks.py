"""The executor's tasks as the mining benchmark runs them: YMIR-style /in and /out folders, `start.py` on them,
and the speed section (each task's loop rate and whole-task seconds)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import yaml
from mining_pool import CLASSES, SIZE
from mining_report import NAMES, VARIANTS

from ymir.local.task_folder import ark_text, env_yaml, write_asset

REPO = Path(__file__).resolve().parent.parent

TRAIN_OPTIONS = "--hyp warmup_epochs=0 mosaic=0 lr0=0.02"  # round 0, from scratch
FINETUNE_OPTIONS = "--hyp warmup_epochs=0 mosaic=0 lr0=0.005"  # rounds 1.., warm-started from the previous round


class Task:
    """A YMIR task folder: /in (assets, annotations, index files, config, env) and /out."""

    def __init__(self, root: Path, kind: str, config: dict, classes=CLASSES):
        self.root, self.kind = root, kind
        self.in_dir, self.out = root / "in", root / "out"
        for d in (self.in_dir / "models", self.in_dir / "annotations", self.out / "models", self.out / "tensorboard"):
            d.mkdir(parents=True, exist_ok=True)
        self.config = dict(config, gpu_id="", gpu_count=0, task_id="t" + "0" * 30, class_names=list(classes))

    def add_split(self, name: str, items) -> None:
        lines = []
        for item in items:
            image = write_asset(self.in_dir, item.jpeg)
            sha1 = Path(image).stem
            anno = self.in_dir / "annotations" / sha1[-2:] / f"{sha1}.txt"
            anno.parent.mkdir(parents=True, exist_ok=True)
            anno.write_text(ark_text(item.boxes))
            lines.append(f"{image}\t/in/annotations/{sha1[-2:]}/{sha1}.txt\n")
        (self.in_dir / f"{name}-index.tsv").write_text("".join(lines))

    def add_candidates(self, items) -> list:
        paths = [write_asset(self.in_dir, item.jpeg) for item in items]
        (self.in_dir / "candidate-index.tsv").write_text("".join(p + "\n" for p in paths))
        return paths

    def add_model(self, stage_dir: Path) -> None:
        target = self.in_dir / "models" / "best"
        shutil.copytree(stage_dir, target)
        key = "pretrained_model_params" if self.kind == "training" else "model_params_path"
        self.config[key] = [f"/in/models/best/{f.name}" for f in sorted(target.iterdir())]

    def run(self) -> str:
        (self.in_dir / "config.yaml").write_text(yaml.safe_dump(self.config))
        (self.in_dir / "env.yaml").write_text(yaml.safe_dump(env_yaml(self.kind, self.config["task_id"])))
        proc = subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "start.py"), "--in", str(self.in_dir),
                               "--out", str(self.out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.kind} task failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        return proc.stdout + proc.stderr


def train(work: Path, labelled, test, epochs: int, start_from: Path = None, options: str = TRAIN_OPTIONS,
          classes=CLASSES):
    task = Task(work, "training", {"model": "yolov5n", "epochs": epochs, "img_size": SIZE, "batch_size_per_gpu": 16,
                                   "num_workers_per_gpu": 1, "args_options": options, "export_format": "ark:raw"},
                classes)
    task.add_split("train", labelled)
    task.add_split("val", test)
    if start_from:
        task.add_model(start_from)
    task.run()
    best = yaml.safe_load((task.out / "models" / "result.yaml").read_text())["model_stages"]["best"]
    return task.out / "models" / "best", float(best["mAP"])


def mine(work: Path, model: Path, pool, method: str, infer: bool = False, mining: bool = True, classes=CLASSES):
    kind = "mining+infer" if (mining and infer) else ("mining" if mining else "infer")
    config = {"img_size": SIZE, "batch_size_per_gpu": 16, "num_workers_per_gpu": 1, "conf_thres": 0.25}
    if mining:
        algorithm, extra = VARIANTS.get(method, (method, {}))
        config.update(mining_algorithm=algorithm, seed=0, **extra)
    task = Task(work, kind, config, classes)
    paths = task.add_candidates(pool)
    task.add_model(model)
    started = time.perf_counter()
    log = task.run()
    seconds = time.perf_counter() - started  # the whole task: start-up, loop, ranking, outputs
    timed = re.findall(r"\(([\d.]+) images/s\)", log)
    speed = float(timed[-1]) if timed else None  # random mining alone runs no forward pass
    scores = None
    if mining:
        by_path = dict(line.split("\t") for line in (task.out / "result.tsv").read_text().splitlines())
        scores = np.array([float(by_path[p]) for p in paths])
    detections = json.loads((task.out / "infer-result.json").read_text())["detection"] if infer else None
    return paths, scores, detections, speed, seconds


def speed_section(work: Path, model: Path, pool, classes, repeats: int) -> dict:
    """Each task's loop rate (images/s) and whole-task seconds: plain inference, each method alone and with
    inference; the median of `repeats` runs, the tasks taking turns in each round (the machine's speed drifts)."""
    tasks = [("inference alone", "", True, False)] + [(f"{m} alone", m, False, True) for m in NAMES] + \
        [(f"{m} + inference", m, True, True) for m in NAMES]
    samples = {name: [] for name, *_ in tasks}
    for repeat in range(repeats):
        for name, method, infer, mining in tasks:
            folder = work / f"{repeat}-{name.replace(' ', '-')}"
            samples[name].append(mine(folder, model, pool, method, infer=infer, mining=mining, classes=classes)[3:])
            shutil.rmtree(folder, ignore_errors=True)
    speed = {}
    for name, values in samples.items():
        rates = [rate for rate, _ in values if rate is not None]  # random mining alone runs no forward pass
        speed[name] = float(np.median(rates)) if rates else None
        speed[f"{name} task seconds"] = float(np.median([seconds for _, seconds in values]))
    return speed
