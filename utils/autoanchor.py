"""AutoAnchor: check how well the anchors fit the dataset's boxes and evolve better ones when they do not."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from models.yolo import Detect
from utils.data.sample import Sample

LOG = logging.getLogger(__name__)
MIN_BPR = 0.98  # best possible recall below this triggers the evolution


def label_sizes(samples: Sequence[Sample], img_size: int, rng: np.random.Generator) -> np.ndarray:
    """Box (w, h) in pixels of images resized to img_size (long side), with a random 0.9-1.1 scale."""
    sizes = []
    for s in samples:
        if len(s.boxes):
            scale = img_size / max(s.width, s.height) * rng.uniform(0.9, 1.1)
            sizes.append((s.boxes[:, 2:4] - s.boxes[:, 0:2]) * scale)
    return np.concatenate(sizes, 0).astype(np.float64) if sizes else np.zeros((0, 2))


def ratio_metric(anchors: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """(boxes, anchors) worst-side size ratio in (0, 1]."""
    r = wh[:, None] / anchors[None]
    return np.minimum(r, 1 / r).min(2)


def best_possible_recall(anchors: np.ndarray, wh: np.ndarray, anchor_t: float) -> float:
    return float((ratio_metric(anchors, wh).max(1) > 1 / anchor_t).mean()) if len(wh) else 1.0


def fitness(anchors: np.ndarray, wh: np.ndarray, anchor_t: float) -> float:
    best = ratio_metric(anchors, wh).max(1)
    return float((best * (best > 1 / anchor_t)).mean())


def kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 30) -> np.ndarray:
    centres = points[rng.choice(len(points), k, replace=len(points) < k)]
    for _ in range(iterations):
        nearest = ((points[:, None] - centres[None]) ** 2).sum(2).argmin(1)
        for j in range(k):
            if (nearest == j).any():
                centres[j] = points[nearest == j].mean(0)
    return centres


def evolve_anchors(wh: np.ndarray, n: int, anchor_t: float, rng: np.random.Generator,
                   generations: int = 1000) -> np.ndarray:
    """k-means on whitened sizes, then a mutation search on the anchor fitness; sorted by area."""
    wh = wh[(wh >= 2.0).any(1)]
    std = wh.std(0) + 1e-9
    anchors = kmeans(wh / std, n, rng) * std
    best = fitness(anchors, wh, anchor_t)
    for _ in range(generations):
        v = np.ones(anchors.shape)
        while (v == 1).all():
            v = ((rng.random(anchors.shape) < 0.9) * rng.random() * rng.standard_normal(anchors.shape) * 0.1
                 + 1).clip(0.3, 3.0)
        candidate = (anchors * v).clip(min=2.0)
        score = fitness(candidate, wh, anchor_t)
        if score > best:
            best, anchors = score, candidate
    return anchors[np.argsort(anchors.prod(1))]


def check_anchors(head: Detect, samples: Sequence[Sample], img_size: int, anchor_t: float,
                  seed: int = 0) -> bool:
    """Replace the head's anchors by evolved ones when they would miss more than 2 % of the boxes.

    Returns whether the anchors changed."""
    rng = np.random.default_rng(seed)
    wh = label_sizes(samples, img_size, rng)
    if len(wh) == 0:
        return False
    stride = head.stride.view(-1, 1, 1)
    current = (head.anchors.clone().cpu() * stride).view(-1, 2).numpy()
    bpr = best_possible_recall(current, wh, anchor_t)
    if bpr >= MIN_BPR:
        LOG.info("AutoAnchor: anchors fit the dataset (best possible recall %.4f)", bpr)
        return False
    evolved = evolve_anchors(wh, len(current), anchor_t, rng)
    new_bpr = best_possible_recall(evolved, wh, anchor_t)
    if new_bpr <= bpr:
        LOG.info("AutoAnchor: best possible recall %.4f; evolved anchors are no better (%.4f), kept", bpr, new_bpr)
        return False
    anchors = torch.tensor(evolved, dtype=head.anchors.dtype, device=head.anchors.device).view_as(head.anchors)
    head.anchors[:] = anchors / stride.to(anchors.device)
    LOG.info("AutoAnchor: best possible recall %.4f -> %.4f with evolved anchors %s", bpr, new_bpr,
             np.round(evolved).astype(int).tolist())
    return True
