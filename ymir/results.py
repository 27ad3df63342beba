"""Writers for the result files YMIR reads: result.yaml (model stages), result.tsv, infer-result.json."""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ymir.atomic import write_text_atomic

MAX_STAGES = 11
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RATE_METRICS = ("mAP", "mAR", "mAP50_95", "precision", "recall")
COUNT_METRICS = ("tp", "fp", "fn")


@dataclass
class ModelStage:
    name: str
    files: List[str]
    timestamp: int
    metrics: Dict[str, float] = field(default_factory=dict)

    def to_yaml(self) -> dict:
        data = {"stage_name": self.name, "files": list(self.files), "timestamp": int(self.timestamp)}
        data.update(self.metrics)
        return data


class ModelStageWriter:
    """Keeps `/out/models/result.yaml` in step with the stage folders under `/out/models/<stage>/`.

    A stage is listed only when all its files exist as regular files in its folder. At most 11 stages are
    kept: the best one and the ten newest; the folders of dropped stages are removed.
    """

    def __init__(self, models_dir: Path, evaluate_config: Optional[Mapping[str, float]] = None):
        self.models_dir = Path(models_dir)
        self.stages: Dict[str, ModelStage] = {}
        self.best_stage_name: Optional[str] = None
        self.evaluate_config = {k: float(v) for k, v in (evaluate_config or {}).items()}

    def stage_dir(self, name: str) -> Path:
        check_stage_name(name)
        return self.models_dir / name

    def add(self, name: str, files: Sequence[str], metrics: Mapping[str, float], best: bool = False,
            timestamp: Optional[int] = None) -> None:
        stage_dir = self.stage_dir(name)
        names = [Path(f).name for f in files]
        for fname in names:
            path = stage_dir / fname
            if path.is_symlink() or not path.is_file():
                raise FileNotFoundError(f"stage {name}: {path} is not a regular file")
        self.stages[name] = ModelStage(name, names, int(timestamp if timestamp is not None else time.time()),
                                       clean_metrics(metrics))
        if best or self.best_stage_name is None or self.best_stage_name not in self.stages:
            self.best_stage_name = name
        self._prune()
        self.write()

    def _prune(self) -> None:
        others = sorted((s for s in self.stages.values() if s.name != self.best_stage_name),
                        key=lambda s: s.timestamp)
        while len(others) > MAX_STAGES - 1:
            dropped = others.pop(0)
            del self.stages[dropped.name]
            shutil.rmtree(self.models_dir / dropped.name, ignore_errors=True)

    def write(self) -> None:
        best = self.stages[self.best_stage_name]
        data = {
            "model_stages": {name: stage.to_yaml() for name, stage in self.stages.items()},
            "best_stage_name": best.name,
            "mAP": float(best.metrics.get("mAP", 0.0)),
        }
        if self.evaluate_config:
            data["evaluate_config"] = dict(self.evaluate_config)
        write_text_atomic(self.models_dir / "result.yaml", yaml.safe_dump(data, sort_keys=False))


def check_stage_name(name: str) -> None:
    if not STAGE_NAME.match(name):
        raise ValueError(f"stage name {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")


def clean_metrics(metrics: Mapping[str, float]) -> Dict[str, float]:
    """Plain Python numbers only: rates as floats clipped to [0, 1], counts as non-negative ints."""
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        if key in COUNT_METRICS:
            out[key] = max(0, int(value))
        else:
            number = float(value)
            out[key] = 0.0 if not math.isfinite(number) else min(1.0, max(0.0, number))
    return out


def write_mining_result(path: Path, scores: Sequence[Tuple[str, float]]) -> None:
    """One `image TAB score` line per candidate, highest score first; equal scores keep input order."""
    ranked = sorted(scores, key=lambda item: -item[1])
    lines = []
    for image, score in ranked:
        if not math.isfinite(score):
            raise ValueError(f"mining score of {image} is not finite: {score}")
        lines.append(f"{image}\t{score!r}\n")
    write_text_atomic(Path(path), "".join(lines))


@dataclass(frozen=True)
class Detection:
    """A detected box in original-image pixels, exclusive corners."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_id: int


def ymir_box(det: Detection, width: int, height: int) -> Optional[Dict[str, int]]:
    """Integer x, y, w, h clipped to the image; None when nothing of the box is left."""
    x1 = min(max(int(round(det.x1)), 0), width)
    y1 = min(max(int(round(det.y1)), 0), height)
    x2 = min(max(int(round(det.x2)), 0), width)
    y2 = min(max(int(round(det.y2)), 0), height)
    if x2 <= x1 or y2 <= y1:
        return None
    return {"x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1}


def infer_result(predictions: Mapping[str, Tuple[Sequence[Detection], Tuple[int, int]]],
                 class_names: Sequence[str], boxes_key: str = "boxes") -> dict:
    """infer-result.json's content. `predictions` maps each candidate path to (detections, (width, height)) of the
    original image; a box that vanishes when clipped to its image, or names no class, is left out."""
    detection = {}
    for image_path, (dets, (width, height)) in predictions.items():
        boxes = []
        for det in sorted(dets, key=lambda d: -d.score):
            if not 0 <= det.class_id < len(class_names):
                continue
            box = ymir_box(det, width, height)
            if box is not None:
                boxes.append({"box": box, "class_name": class_names[det.class_id], "score": float(det.score)})
        detection[Path(image_path).name] = {boxes_key: boxes}
    return {"detection": detection}


def write_infer_result(path: Path, predictions, class_names: Sequence[str], protocol_version: str = "1.1.0") -> int:
    """Write infer-result.json; returns the number of boxes it holds (boxes that vanish when clipped to their
    image are not written)."""
    # Protocol 0.0.0 (YMIR <= 1.1) names the list `annotations`.
    key = "boxes" if _version_tuple(protocol_version) >= (1, 0, 0) else "annotations"
    content = infer_result(predictions, class_names, key)
    write_text_atomic(Path(path), json.dumps(content))
    return sum(len(image[key]) for image in content["detection"].values())


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for part in str(text).split("."):
        digits = re.match(r"\d+", part)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)
