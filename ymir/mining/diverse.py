"""`diverse` mining: uncertainty that counts each class by how hard it is for this model, in an order where every
prefix of result.tsv is a varied batch (YMIR takes the first `topk` lines and never says how many).

Evidence, per image, from the shared forward pass: the boxes NMS keeps at score >= MIN_SCORE (the MAX_BOXES most
confident), each with its class, score, uncertainty (entropy's per-box uncertainty in [0, 1]) and a feature: the
neck's feature vector at the cell that predicted it, projected to FEATURE_DIM by a fixed seeded random matrix per
level (distances survive a random projection) and scaled to unit length.

1. Difficulty. Each class c gets a quality q_c in [0, 1]: its AP@0.5 on the validation set of the model's best
   stage, where the checkpoint records it; otherwise, from the pool itself, the mean score of the class's boxes
   times its share of the boxes relative to an even share (capped at 1), so that a class the model rarely and
   hesitantly predicts is hard. A class with no box anywhere in the pool, and no recorded AP, has q = 0. Its weight
   is w_c = 1 + (1 - q_c), in [1, 2] (PPAL's difficulty-weighted uncertainty, with a wider range).
2. Image uncertainty: the mean of the TOP_BOXES largest w_c x u over its boxes (as entropy aggregates: neither
   crowded images nor many easy boxes decide it).
3. Order. The image descriptor is the score-weighted mean of its boxes' features per class, the classes side by
   side (nc x FEATURE_DIM), unit length: two images are close when they hold similar-looking boxes of the same
   classes, and images without a class in common are 1 apart. Over the SHORTLIST_MAX most uncertain images with
   boxes, a greedy weighted farthest-point order: first the most uncertain image, then each time the one whose
   uncertainty (relative to the highest) times its cosine distance to the nearest image already placed is
   largest (a weighted k-centre walk: every prefix is spread out): near-duplicates and runs of one class sink down
   the list. Images beyond the shortlist follow by uncertainty (the walk costs shortlist^2 distances). Where the
   model's checkpoint describes the images it was trained on (ymir.mining.labelled_looks), the walk starts with
   them already placed (its first pick is then the largest relative uncertainty times the distance to the nearest
   labelled image): a candidate whose descriptor is close to a labelled image's gains little and sinks.
4. Images predicted empty (no box at MIN_SCORE) are where false negatives hide: they take `empty_share` of every
   top of the list (places 1/share, 2/share, ...), the strongest near miss first (their most confident raw
   prediction), and follow the others once that share is spent.

result.tsv's scores are the places: 1 - place / n, so that descending scores give this order.
"""
from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ymir.mining.entropy import ENTROPY_MIN_SCORE, TOP_BOXES, box_uncertainty
from ymir.mining.ordering import farthest_point_order, interleaved_order

MIN_SCORE = ENTROPY_MIN_SCORE
MAX_BOXES = 20
FEATURE_DIM = 32
SHORTLIST_MAX = 2000
PROJECTION_SEED = 0
# evidence rows: class, score, uncertainty, then the FEATURE_DIM feature values
CLASS, SCORE, UNCERTAINTY, FEATURE = 0, 1, 2, 3


@dataclass(frozen=True)
class Evidence:
    """What one image gives the ranking: (n, 3 + FEATURE_DIM) rows for its boxes, and for an image without a box
    its most confident raw prediction (the strength of its near miss)."""

    rows: np.ndarray
    near_miss: float = 0.0


@functools.lru_cache(maxsize=16)
def projection(channels: int, level: int) -> torch.Tensor:
    """The fixed (channels, FEATURE_DIM) Gaussian projection of one level's features, the same on every rank."""
    generator = torch.Generator().manual_seed(PROJECTION_SEED * 1000 + level)
    return torch.randn(channels, FEATURE_DIM, generator=generator) / FEATURE_DIM ** 0.5


def box_features(neck: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], anchors: int) -> List[np.ndarray]:
    """Per image of the batch, (n, FEATURE_DIM) unit vectors for its decoded rows `rows[b]`: the neck's feature
    vector at the cell of each row's level (the decoded rows run level by level, each anchor x y x x), projected.
    The cells of the whole batch are gathered at once per level; each image's projection is its own product, so an
    image's features do not depend on which images share its batch (1 process or several rank alike)."""
    counts = [len(r) for r in rows]
    flat = torch.cat([r.cpu() for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
    image = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(counts, dtype=torch.long))
    per_image = [torch.zeros(n, FEATURE_DIM) for n in counts]
    start = 0
    for level, maps in enumerate(neck):
        _, channels, height, width = maps.shape
        end = start + anchors * height * width
        here = (flat >= start) & (flat < end)
        if here.any():
            cell = (flat[here] - start) % (height * width)
            y = torch.div(cell, width, rounding_mode="floor")
            x = cell - y * width
            index = [t.to(maps.device) for t in (image[here], y, x)]
            vectors = maps.permute(1, 0, 2, 3)[:, index[0], index[1], index[2]].float().cpu()  # (channels, k)
            owners = image[here]
            for b in torch.unique(owners).tolist():
                per_image[b][here[image == b]] = vectors[:, owners == b].T @ projection(channels, level)
        start = end
    return [torch.nn.functional.normalize(f, dim=1).numpy() for f in per_image]


def image_evidence(scores: np.ndarray, class_probs: np.ndarray, features: np.ndarray, near_miss: float) -> Evidence:
    """The evidence of one image from its kept boxes (most confident first) and their features."""
    keep = np.argsort(-scores, kind="stable")[:MAX_BOXES]
    if not len(keep):
        return Evidence(np.zeros((0, FEATURE + FEATURE_DIM), np.float16), float(near_miss))
    rows = np.concatenate([class_probs[keep].argmax(1)[:, None], scores[keep, None],
                           box_uncertainty(scores[keep], class_probs[keep])[:, None], features[keep]], axis=1)
    return Evidence(rows.astype(np.float16))  # half the memory every process gathers; class ids stay exact


def recorded_class_ap(value: object, nc: int) -> Optional[List[Optional[float]]]:
    """A checkpoint's `class_ap50` (ours record it; a user's file may hold anything): one number in [0, 1] or None
    per class, else None."""
    if not isinstance(value, (list, tuple)) or len(value) != nc:
        return None
    valid = [v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                           and 0.0 <= v <= 1.0) for v in value]
    return [None if v is None else float(v) for v in value] if all(valid) else None


def class_quality(evidence: Sequence[Evidence], nc: int, class_ap: Optional[Sequence[Optional[float]]]) -> np.ndarray:
    """q_c in [0, 1]: the recorded AP@0.5 where there is one, else from the pool's boxes (module docstring)."""
    rows = np.concatenate([e.rows for e in evidence]).astype(np.float64) if evidence else np.zeros((0, FEATURE))
    classes = rows[:, CLASS].astype(int)
    counts = np.bincount(classes, minlength=nc)[:nc].astype(np.float64)
    mean_score = np.bincount(classes, weights=rows[:, SCORE], minlength=nc)[:nc] / np.maximum(counts, 1)
    share = counts / max(counts.sum(), 1.0) * nc
    quality = mean_score * np.minimum(share, 1.0)
    for c, ap in enumerate(class_ap or []):
        if ap is not None:
            quality[c] = ap
    return np.clip(quality, 0.0, 1.0)


def image_uncertainty(rows: np.ndarray, weights: np.ndarray) -> float:
    weighted = np.sort(weights[rows[:, CLASS].astype(int)] * rows[:, UNCERTAINTY].astype(np.float64))[::-1][:TOP_BOXES]
    return float(weighted.mean()) if len(weighted) else 0.0


def descriptor(rows: np.ndarray, nc: int) -> np.ndarray:
    """Score-weighted mean feature per class, the classes side by side, unit length."""
    out = np.zeros((nc, FEATURE_DIM), dtype=np.float32)
    np.add.at(out, rows[:, CLASS].astype(int), rows[:, SCORE, None].astype(np.float32) * rows[:, FEATURE:])
    flat = out.ravel()
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 0 else flat


def diverse_order(evidence: Sequence[Evidence], nc: int, class_ap: Optional[Sequence[Optional[float]]],
                  empty_share: float, labelled: Optional[np.ndarray] = None) -> np.ndarray:
    """The order of the images (indices into `evidence`), most worth labelling first; `labelled`: descriptors of
    images already labelled (ymir.mining.labelled_looks), placed before the walk begins."""
    weights = 1.0 + (1.0 - class_quality(evidence, nc, class_ap))
    detected = np.array([i for i, e in enumerate(evidence) if len(e.rows)], dtype=int)
    empty = np.array([i for i, e in enumerate(evidence) if not len(e.rows)], dtype=int)
    uncertainty = np.array([image_uncertainty(evidence[i].rows, weights) for i in detected])
    by_uncertainty = detected[np.argsort(-uncertainty, kind="stable")]
    size = min(SHORTLIST_MAX, len(detected))
    shortlist = by_uncertainty[:size]
    if size:
        looks = np.stack([descriptor(evidence[i].rows, nc) for i in shortlist])
        relative = np.sort(uncertainty)[::-1][:size]
        shortlist = shortlist[farthest_point_order(looks, relative / max(relative[0], 1e-12), labelled)]
    main = np.concatenate([shortlist, by_uncertainty[size:]]).astype(int)
    near_misses = empty[np.argsort([-evidence[i].near_miss for i in empty], kind="stable")].astype(int)
    return interleaved_order(main, near_misses, empty_share)


def place_scores(order: np.ndarray) -> np.ndarray:
    """Scores that sort into `order`: 1 - place / n, for each index."""
    n = len(order)
    scores = np.empty(n)
    scores[order] = 1.0 - np.arange(n) / max(n, 1)
    return scores


def rank(evidence: List[Evidence], nc: int, class_ap, empty_share: float,
         labelled: Optional[np.ndarray] = None) -> np.ndarray:
    return place_scores(diverse_order(evidence, nc, class_ap, empty_share, labelled))
