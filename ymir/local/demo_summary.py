"""The demo's summary: what `tools/demo.sh` made under its folder, judged against the shapes drawn in the candidates.

`python -m ymir.local.demo DEMO_DIR --summary [--seconds S]` prints it and writes DEMO_DIR/first-candidates.png.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
import yaml

from utils.data.images import read_image
from utils.plots import draw_boxes, mosaic_of
from ymir.training_report import DISPLAY_SCORE

MATCH_IOU = 0.5
PICTURE_CANDIDATES = 8
PICTURE_SIDE = 256  # each candidate drawn this large (the demo's images are small), so that the labels can be read
Box = Tuple[str, float, float, float, float]  # class name, x1, y1, x2, y2


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def matched(truth: Sequence[Box], predicted: Sequence[Tuple[Box, float]]) -> int:
    """How many predictions (most confident first) find a drawn shape of their class at IoU >= MATCH_IOU, each
    shape taken once, as detection metrics count true positives."""
    free = list(truth)
    found = 0
    for (name, *box), _ in sorted(predicted, key=lambda item: -item[1]):
        scores = [iou(box, t[1:]) if t[0] == name else 0.0 for t in free]
        if scores and max(scores) >= MATCH_IOU:
            free.pop(int(np.argmax(scores)))
            found += 1
    return found


def predictions(infer_result: Path) -> Dict[str, List[Tuple[Box, float]]]:
    """infer-result.json's boxes scoring >= DISPLAY_SCORE, by file name, as corners."""
    detection = json.loads(infer_result.read_text())["detection"]
    return {name: [((b["class_name"], b["box"]["x"], b["box"]["y"], b["box"]["x"] + b["box"]["w"],
                     b["box"]["y"] + b["box"]["h"]), b["score"]) for b in image["boxes"] if b["score"] >= DISPLAY_SCORE]
            for name, image in detection.items()}


def first_candidates_picture(mine_dir: Path, ranked: Sequence[str], truth: Dict[str, list],
                             predicted: Dict[str, List[Tuple[Box, float]]], names: Sequence[str]) -> np.ndarray:
    """Each of the first candidates twice, side by side: the shapes drawn in it, and the predictions."""
    index = {name: k for k, name in enumerate(names)}
    pictures = []
    for path in ranked[:PICTURE_CANDIDATES]:
        img = read_image(mine_dir / "in" / path[len("/in/"):])
        scale = PICTURE_SIDE / max(img.shape[:2])
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        chw = torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))
        drawn = np.array([t[1:] for t in truth.get(path, [])], dtype=np.float64).reshape(-1, 4) * scale
        pictures.append(draw_boxes(chw, drawn, np.array([index[t[0]] for t in truth.get(path, [])]), names))
        shown = predicted.get(Path(path).name, [])
        boxes = np.array([b[1:] for b, _ in shown], dtype=np.float64).reshape(-1, 4) * scale
        pictures.append(draw_boxes(chw, boxes, np.array([index[b[0]] for b, _ in shown]), names,
                                   np.array([s for _, s in shown])))
    return mosaic_of(pictures, columns=4)


def summary(demo_dir: Path, seconds: float) -> List[str]:
    """The lines to print; writes DEMO_DIR/first-candidates.png."""
    train_out, mine = demo_dir / "train" / "out", demo_dir / "mine"
    result = yaml.safe_load((train_out / "models" / "result.yaml").read_text())
    best = result["model_stages"][result["best_stage_name"]]
    names = yaml.safe_load((mine / "in" / "config.yaml").read_text())["class_names"]
    ranked = [line.split("\t")[0] for line in (mine / "out" / "result.tsv").read_text().splitlines()]
    truth = json.loads((mine / "truth.json").read_text())
    predicted = predictions(mine / "out" / "infer-result.json")
    counts = [len(predicted.get(Path(path).name, [])) for path in ranked]
    drawn = sum(len(boxes) for boxes in truth.values())
    found = sum(matched([tuple(t) for t in truth[path]], predicted.get(Path(path).name, [])) for path in ranked)
    picture = demo_dir / "first-candidates.png"
    cv2.imwrite(str(picture), first_candidates_picture(mine, ranked, truth, predicted, names)[..., ::-1])
    minutes, rest = divmod(int(round(seconds)), 60)
    return [
        f"model: {train_out / 'models' / result['best_stage_name']}/ {best['files']}",
        f"  mAP@0.5 {best['mAP']:.3f}   mAP@0.5:0.95 {best['mAP50_95']:.3f}   "
        f"(TensorBoard: {train_out / 'tensorboard'})",
        f"mining: {len(ranked)} candidates ranked in {mine / 'out' / 'result.tsv'}; most valuable: {ranked[0]}",
        f"  report: {mine / 'out' / 'mining-report.png'} (and .json)",
        f"inference: {sum(counts)} boxes scoring >= {DISPLAY_SCORE} on {sum(1 for c in counts if c)} of {len(ranked)} "
        f"images ({sum(counts) / max(1, len(ranked)):.1f} per image, at most {max(counts, default=0)}) in "
        f"{mine / 'out' / 'infer-result.json'}",
        f"  against the shapes drawn in them: {found} of {drawn} found (IoU >= {MATCH_IOU}, right class); "
        f"{found} of {sum(counts)} boxes right",
        f"picture: {picture} (the first {min(PICTURE_CANDIDATES, len(ranked))} candidates of result.tsv, each twice: "
        "the shapes drawn in it, then the predictions)",
        f"total time: {minutes}m{rest:02d}s",
    ]
