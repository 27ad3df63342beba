"""`entropy` mining.

Every box the detector keeps after NMS with score >= ENTROPY_MIN_SCORE is a candidate object. Its uncertainty, in
[0, 1], is the binary entropy (bits) of its score s = objectness x best class probability; with several classes,
averaged with the normalised entropy of its class distribution (the class probabilities rescaled to sum to 1,
entropy divided by log2(nc)). The image score is the mean of its TOP_BOXES most uncertain boxes: independent of how
crowded the image is, yet not diluted by many easy boxes, and comparable across image sizes.

An image without such a box ranks below every image with one, by its most confident raw prediction b (before NMS):
(b / ENTROPY_MIN_SCORE - 1) / 2, in [-0.5, 0), the nearest to a detection first. A weak or conservative model (a new
class learnt from few examples) may keep no box above the floor anywhere; its candidates are then still ranked by
where it comes closest to seeing an object, not left tied at 0. Unreadable images stay last (-1).
"""
from __future__ import annotations

import numpy as np

ENTROPY_MIN_SCORE = 0.05
TOP_BOXES = 3
_EPS = 1e-12


def binary_entropy_bits(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def class_entropy_normalised(class_probs: np.ndarray) -> np.ndarray:
    """Entropy of each row's class distribution (probabilities rescaled to sum to 1), divided by log2(nc)."""
    nc = class_probs.shape[1]
    if nc < 2:
        return np.zeros(len(class_probs))
    q = np.clip(class_probs, _EPS, None)
    q = q / q.sum(1, keepdims=True)
    return -(q * np.log2(q)).sum(1) / np.log2(nc)


def box_uncertainty(scores: np.ndarray, class_probs: np.ndarray) -> np.ndarray:
    """Per-box uncertainty in [0, 1] from detection scores (n,) and class probabilities (n, nc)."""
    u = binary_entropy_bits(scores)
    if class_probs.shape[1] > 1:
        u = (u + class_entropy_normalised(class_probs)) / 2
    return u


def undetected_score(best_score: float) -> float:
    """Score of an image without a box above ENTROPY_MIN_SCORE, from its most confident raw prediction (a
    non-finite one, from a broken model, counts as no evidence at all)."""
    if not np.isfinite(best_score):
        best_score = 0.0
    return (min(max(best_score, 0.0), ENTROPY_MIN_SCORE) / ENTROPY_MIN_SCORE - 1) / 2


def entropy_score(scores: np.ndarray, class_probs: np.ndarray, best_score: float = 0.0) -> float:
    """`scores` (n,) and `class_probs` (n, nc) of the boxes kept after NMS; `best_score`: the image's most
    confident raw prediction, used when no box was kept."""
    if len(scores) == 0:
        return undetected_score(best_score)
    u = np.sort(box_uncertainty(scores, class_probs))[::-1][:TOP_BOXES]
    return float(u.mean())
