"""The mining report beside result.tsv: what the first lines of the ranking hold, for a person to judge.

`/out/mining-report.json` and `/out/mining-report.png` (YMIR ignores other files in /out). For the first 10, 50 and
200 lines and for the whole pool: the predicted classes, the share of images predicted empty, boxes per image and
the groups of near-duplicates among them; the distribution of the scores; and how the order was made (by score, or
a seeded draw where the scores say nothing). The picture adds the first candidates with their predicted boxes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.data.images import ImageReadError, read_image
from utils.plots import colour
from ymir.atomic import write_bytes_atomic, write_text_atomic

LOG = logging.getLogger(__name__)

PREFIXES = (10, 50, 200)
REPORT_SCORE = 0.25  # boxes counted and drawn: YOLOv5's detect.py threshold, as in the TensorBoard pictures
THUMBNAIL_SIDE = 8  # the look of an image: its letterboxed input averaged to 8 x 8 x 3
DUPLICATE_SIMILARITY = 0.95  # cosine similarity of two looks (each centred on its mean) above which they are one
MAX_DUPLICATE_POOL = 2000  # near-duplicates are counted in prefixes and pools up to this size (pairwise cost)
SCORE_BINS = 20
PICTURE_CANDIDATES = 8


@dataclass
class RankedImage:
    """One line of result.tsv as the report sees it."""

    path: Path  # the file read, to draw the first ones
    score: float
    readable: bool
    boxes: Optional[np.ndarray] = None  # (n, 6) x1 y1 x2 y2 score class in original pixels; None: no model ran
    look: Optional[np.ndarray] = None  # thumbnail_looks() row


@dataclass(frozen=True)
class RankingRule:
    """How result.tsv was ordered: by score, or (`reason` set) by a seeded draw because the scores carry nothing."""

    algorithm: str
    reason: Optional[str] = None
    seed: int = 0

    def to_json(self) -> dict:
        if self.reason is None:
            return {"algorithm": self.algorithm, "order": "by score"}
        return {"algorithm": self.algorithm, "order": f"random draw from seed {self.seed}", "why": self.reason}


def thumbnail_looks(images_uint8: torch.Tensor) -> np.ndarray:
    """(B, 192) unit vectors in float16 (every image's look travels to rank 0): each letterboxed image averaged to
    8 x 8 x 3, centred on its own mean. Two images whose looks have a cosine similarity above DUPLICATE_SIMILARITY
    are near-copies (a re-encoded or slightly shifted frame); a uniform image gives the zero vector, a copy of
    nothing."""
    small = F.adaptive_avg_pool2d(images_uint8.float(), THUMBNAIL_SIDE).flatten(1)
    small = small - small.mean(1, keepdim=True)
    norms = small.norm(dim=1, keepdim=True)
    return (small / norms.clamp(min=1e-6)).where(norms > 1e-3, torch.zeros_like(small)).half().numpy()


def duplicate_groups(looks: np.ndarray, similarity: float = DUPLICATE_SIMILARITY) -> List[List[int]]:
    """Groups (two or more members, by index) of images linked by a chain of near-copy pairs."""
    n = len(looks)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    pairs = np.argwhere(np.triu(looks @ looks.T > similarity, k=1))
    for i, j in pairs:
        parent[root(int(i))] = root(int(j))
    members: Dict[int, List[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return [group for group in members.values() if len(group) > 1]


def _shown(boxes: np.ndarray) -> np.ndarray:
    return boxes[boxes[:, 4] >= REPORT_SCORE]


def prefix_summary(images: Sequence[RankedImage], class_names: Sequence[str]) -> dict:
    """What a set of lines holds. Prediction figures only where a model ran; near-duplicates where looks exist."""
    readable = [im for im in images if im.readable]
    summary: dict = {"images": len(images), "unreadable": len(images) - len(readable)}
    if readable and readable[0].boxes is not None:
        shown = [_shown(im.boxes)[:, 5].astype(int) for im in readable]
        counts = [len(classes) for classes in shown]
        per_class = np.bincount(np.concatenate(shown), minlength=len(class_names))
        with_class = np.bincount(np.concatenate([np.unique(classes) for classes in shown]), minlength=len(class_names))
        summary.update(
            predicted_empty_share=round(sum(1 for c in counts if c == 0) / len(readable), 4),
            boxes_per_image=round(float(np.mean(counts)), 3),
            boxes_per_class={name: int(per_class[c]) for c, name in enumerate(class_names)},
            images_per_class={name: int(with_class[c]) for c, name in enumerate(class_names)})
    if readable and readable[0].look is not None and len(readable) <= MAX_DUPLICATE_POOL:
        groups = duplicate_groups(np.stack([im.look for im in readable]).astype(np.float32))
        summary.update(near_duplicate_groups=len(groups),
                       images_in_near_duplicate_groups=sum(len(g) for g in groups))
    return summary


def score_histogram(images: Sequence[RankedImage]) -> dict:
    scores = np.array([im.score for im in images if im.readable], dtype=np.float64)
    if not len(scores):
        return {"count": 0, "edges": [], "counts": []}
    low, high = float(scores.min()), float(scores.max())
    counts, edges = np.histogram(scores, bins=SCORE_BINS, range=(low, high if high > low else low + 1.0))
    return {"count": len(scores), "min": low, "max": high, "mean": float(scores.mean()),
            "distinct": int(len(np.unique(scores))),
            "edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def build_report(images: Sequence[RankedImage], class_names: Sequence[str], rule: RankingRule) -> dict:
    """The report's numbers; `images` in result.tsv's order."""
    prefixes = {f"first {k}": prefix_summary(images[:k], class_names) for k in PREFIXES if k < len(images)}
    prefixes["all"] = prefix_summary(images, class_names)
    return {"ranking": rule.to_json(), "candidates": len(images), "box_score_threshold": REPORT_SCORE,
            "near_duplicate_similarity": DUPLICATE_SIMILARITY, "scores": score_histogram(images),
            "prefixes": prefixes}


def write_report(json_file: Path, picture_file: Path, images: Sequence[RankedImage], class_names: Sequence[str],
                 rule: RankingRule) -> None:
    """Both files; any failure here costs the report, never the task (the task's results are already written)."""
    try:
        report = build_report(images, class_names, rule)
        write_text_atomic(json_file, json.dumps(report, indent=1) + "\n")
        picture = report_picture(report, images[:PICTURE_CANDIDATES], class_names)
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(picture[..., ::-1]))
        if ok:
            write_bytes_atomic(picture_file, encoded.tobytes())
        LOG.info("mining report written: %s, %s", json_file, picture_file)
    except Exception as exc:  # an optional picture and summary: nothing in them may fail the task
        LOG.warning("the mining report could not be written (%s: %s); result.tsv is complete",
                    type(exc).__name__, exc)


# -- the picture ---------------------------------------------------------------------------------------------------
WIDTH, TILE, BLACK, GREY, RED = 960, 112, (0, 0, 0), (150, 150, 150), (200, 30, 30)


def _text(img: np.ndarray, text: str, x: int, y: int, colour_=BLACK, scale: float = 0.42) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour_, 1, cv2.LINE_AA)


def _histogram_panel(img: np.ndarray, scores: dict, x0: int, y0: int, w: int, h: int) -> None:
    _text(img, "scores (all readable candidates)", x0, y0 - 8)
    cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), GREY, 1)
    counts = scores.get("counts") or []
    if not counts:
        return
    top = max(counts)
    bar = w / len(counts)
    for k, c in enumerate(counts):
        bar_h = int((h - 4) * c / max(top, 1))
        left, right = x0 + int(k * bar), x0 + int((k + 1) * bar) - 2
        cv2.rectangle(img, (left, y0 + h - bar_h), (right, y0 + h), (70, 110, 200), -1)
    _text(img, f"{scores['min']:.3g}", x0, y0 + h + 16)
    _text(img, f"{scores['max']:.3g}", x0 + w - 50, y0 + h + 16)
    _text(img, f"most in one bin: {top}", x0 + w // 2 - 60, y0 + h + 16)


def _prefix_panel(img: np.ndarray, prefixes: dict, class_names: Sequence[str], x0: int, y0: int, w: int) -> int:
    y = y0
    for name, p in prefixes.items():
        line = f"{name}:"
        if "boxes_per_image" in p:
            line += f" {p['boxes_per_image']:.2f} boxes/image, {100 * p['predicted_empty_share']:.0f}% empty"
        if "near_duplicate_groups" in p:
            line += f", {p['near_duplicate_groups']} near-duplicate group(s)"
        _text(img, line, x0, y)
        y += 8
        if "boxes_per_class" in p:
            total = sum(p["boxes_per_class"].values())
            x = x0
            for c, cls in enumerate(class_names):
                share = p["boxes_per_class"][cls] / total if total else 0.0
                cv2.rectangle(img, (int(x), y), (int(x + share * w), y + 12), colour(c)[::-1], -1)
                x += share * w
            if not total:
                cv2.rectangle(img, (x0, y), (x0 + w, y + 12), GREY, 1)
        y += 30
    x = x0
    for c, cls in enumerate(class_names[:12]):
        cv2.rectangle(img, (x, y - 10), (x + 10, y), colour(c)[::-1], -1)
        _text(img, cls[:12], x + 14, y)
        x += 24 + 8 * len(cls[:12])
        if x > x0 + w - 60:
            break
    return y


def _candidate_tile(image: RankedImage, rank: int, class_names: Sequence[str]) -> np.ndarray:
    tile = np.full((TILE + 18, TILE, 3), 255, np.uint8)
    try:
        pixels = read_image(image.path)[..., ::-1]
    except ImageReadError:
        _text(tile, f"#{rank} unreadable", 4, TILE // 2, RED)
        return tile
    h, w = pixels.shape[:2]
    scale = TILE / max(h, w)
    small = cv2.resize(np.ascontiguousarray(pixels), (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    tile[:small.shape[0], :small.shape[1]] = small
    for x1, y1, x2, y2, _, cls in (_shown(image.boxes) if image.boxes is not None else []):
        cv2.rectangle(tile, (int(x1 * scale), int(y1 * scale)), (int(x2 * scale), int(y2 * scale)),
                      colour(int(cls))[::-1], 1)
    _text(tile, f"#{rank}  {image.score:.3g}", 2, TILE + 13, scale=0.38)
    return tile


def report_picture(report: dict, first: Sequence[RankedImage], class_names: Sequence[str]) -> np.ndarray:
    """RGB picture: how the order was made, the score histogram, each prefix's classes and empties, and the first
    candidates with their boxes (score >= REPORT_SCORE, coloured by class)."""
    img = np.full((510, WIDTH, 3), 255, np.uint8)
    ranking = report["ranking"]
    _text(img, f"mining report: {ranking['algorithm']}, {report['candidates']} candidates, ordered "
               f"{ranking['order']}", 12, 22, scale=0.5)
    if "why" in ranking:
        _text(img, ranking["why"][:130], 12, 42, RED)
    _histogram_panel(img, report["scores"], 12, 80, 400, 200)
    _text(img, f"boxes scoring >= {REPORT_SCORE} by class (colour)", 450, 72)
    _prefix_panel(img, report["prefixes"], class_names, 450, 94, 480)
    _text(img, "the first candidates, in result.tsv's order, with their boxes", 12, 360)
    for k, image in enumerate(first):
        tile = _candidate_tile(image, k + 1, class_names)
        x = 12 + k * (TILE + 6)
        img[370:370 + tile.shape[0], x:x + TILE] = tile
    return img
