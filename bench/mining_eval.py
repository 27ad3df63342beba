"""How the mining benchmark judges a model and a selection: per-image detection errors FN + FP, a trained model's
test mAP@0.5 by subset and AP@0.5 by class (the executor's own validation geometry, NMS and metrics), the rank
correlation of scores with errors, and what a set of selected pool images holds."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from mining_pool import CLASSES, SIZE, repeated_scenes


def image_errors(paths, detections, pool, classes=CLASSES) -> np.ndarray:
    """FN + FP per image at IoU 0.5 (greedy, class-aware) of conf >= 0.25 detections."""
    errors = []
    for path, item in zip(paths, pool):
        found = detections[path.rsplit("/", 1)[1]]["boxes"]
        found = sorted(found, key=lambda b: -b["score"])
        truth = [(c, x1, y1, x2 + 1, y2 + 1) for c, x1, y1, x2, y2 in item.boxes]
        used, tp = set(), 0
        for det in found:
            b = det["box"]
            dx1, dy1, dx2, dy2 = b["x"], b["y"], b["x"] + b["w"], b["y"] + b["h"]
            best, best_iou = None, 0.5
            for i, (c, x1, y1, x2, y2) in enumerate(truth):
                if i in used or classes[c] != det["class_name"]:
                    continue
                inter = max(0, min(x2, dx2) - max(x1, dx1)) * max(0, min(y2, dy2) - max(y1, dy1))
                iou = inter / ((x2 - x1) * (y2 - y1) + (dx2 - dx1) * (dy2 - dy1) - inter)
                if iou >= best_iou:
                    best, best_iou = i, iou
            if best is not None:
                used.add(best)
                tp += 1
        errors.append((len(truth) - tp) + (len(found) - tp))
    return np.array(errors, dtype=np.float64)


def breakdown(model_dir: Path, test, classes=CLASSES) -> dict:
    """Where a model's test mAP@0.5 comes from: over all test images (what training reports), over the unshifted and
    the shifted ones, and AP@0.5 per class. The executor's validation geometry and settings (each 160 px image
    letterboxed into YOLOv5's padded validation shape), its NMS and its metrics."""
    import torch

    from utils.boxes import unletterbox_boxes
    from utils.checkpoint import build_model, read_checkpoint
    from utils.data.letterbox import letterbox
    from utils.metrics import MetricAccumulator
    from utils.nms import non_max_suppression
    from utils.validate import VAL_CONF, VAL_IOU, VAL_MAX_DET

    model = build_model(read_checkpoint(model_dir / "best.pt"))
    stride = int(model.stride.max())
    shape = int(np.ceil(SIZE / stride + 0.5)) * stride
    subsets = {name: MetricAccumulator(len(classes)) for name in ("all", "unshifted", "shifted")}
    for start in range(0, len(test), 32):
        batch = test[start:start + 32]
        boxed = [letterbox(cv2.imdecode(np.frombuffer(item.jpeg, np.uint8), cv2.IMREAD_COLOR), shape, auto=False,
                           scaleup=False) for item in batch]
        x = torch.from_numpy(np.stack([b[0][:, :, ::-1].transpose(2, 0, 1) for b in boxed]).copy()).float() / 255
        with torch.no_grad():
            found = non_max_suppression(model(x)[0], VAL_CONF, VAL_IOU, multi_label=True, max_det=VAL_MAX_DET)
        for det, (_, ratio, pad), item in zip(found, boxed, batch):
            det[:, :4] = unletterbox_boxes(det[:, :4], ratio, pad, (SIZE, SIZE))
            truth = torch.tensor([[c, x1, y1, x2 + 1, y2 + 1] for c, x1, y1, x2, y2 in item.boxes],
                                 dtype=torch.float32).reshape(-1, 5)
            for name in ("all", "shifted" if item.shifted else "unshifted"):
                subsets[name].add(det, truth)
    result = {name: acc.compute() for name, acc in subsets.items()}
    per_class = result["all"].per_class
    ap = dict(zip(per_class.classes.tolist(), per_class.ap[:, 0].tolist())) if per_class is not None else {}
    return {**{name: m.map50 for name, m in result.items() if subsets[name].stats},  # no shifted subset without --shift
            "per_class": [ap.get(c, 0.0) for c in range(len(classes))]}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # average ranks for ties
            r[x == value] = r[x == value].mean()
        return r
    if np.ptp(a) == 0 or np.ptp(b) == 0:  # a constant ranks nothing (e.g. a model without detections)
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def selection_stats(items, rare: int = len(CLASSES) - 1, labelled=()) -> dict:
    """What a set of pool images holds: how many, how many empty / hard / shifted / with the rare class (with
    --target: the target class), how many boxes; in a pool with near-duplicates, how many show a scene that an
    earlier one of them shows (`repeats`) and how many a scene already `labelled` (`known`)."""
    known = {item.scene for item in labelled if item.scene >= 0}
    return {"images": len(items), "empty": sum(item.kind == "empty" for item in items),
            "hard": sum(item.kind == "hard" for item in items), "shifted": sum(item.shifted for item in items),
            "rare": sum(any(b[0] == rare for b in item.boxes) for item in items),
            "boxes": sum(len(item.boxes) for item in items), "repeats": repeated_scenes(items),
            "known": sum(item.scene in known for item in items)}
