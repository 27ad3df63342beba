"""ALDD mining as the YMIR YOLOv5 executor defines it (Aghdam et al., ICCV 2019, extended to many classes).

For each class c and each anchor k of each level: the map P_k = sigmoid(objectness) x sigmoid(class c) is
bilinearly upsampled to the network input size. With A = the mean over a 9x9 window (padding not counted)
and H the binary entropy (natural log, log clamped at -100):
    U = sum_k H(A[P_k]) - sum_k A[H(P_k)]      (entropy of the local mean minus mean local entropy, >= 0)
U is max-pooled over 32x32 blocks and the block maxima are averaged: s_c. The image score is
sum_c w_c s_c, with w from `class_distribution_scores` (missing weights are 1).
All classes are computed together; the work is split into class chunks only to bound memory.
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)
WINDOW = 9
REGION = 32
CHUNK_ELEMENTS = 1 << 24  # ~64 MB of float32 per intermediate map


def class_weights(weights: Sequence[float], nc: int) -> torch.Tensor:
    """Per-class weights: given values, padded with 1.0 (with a warning) or cut to nc."""
    values = list(weights)
    if values and len(values) != nc:
        LOG.warning("class_distribution_scores has %d values for %d classes: %s", len(values), nc,
                    "padding with 1.0" if len(values) < nc else "ignoring the extra values")
    values = (values + [1.0] * nc)[:nc] if values else [1.0] * nc
    return torch.tensor(values, dtype=torch.float32)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p).clamp(min=-100) + (1 - p) * torch.log(1 - p).clamp(min=-100))


def _local_mean(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, WINDOW, stride=1, padding=WINDOW // 2, count_include_pad=False)


def aldd_scores(levels: List[torch.Tensor], input_size: Tuple[int, int], weights: torch.Tensor) -> torch.Tensor:
    """`levels`: raw head outputs, each (B, na, h, w, 5 + nc), before sigmoid. Returns (B,) scores."""
    batch, nc = levels[0].shape[0], levels[0].shape[-1] - 5
    height, width = input_size
    k = sum(level.shape[1] for level in levels)
    chunk = max(1, min(nc, CHUNK_ELEMENTS // (k * height * width)))
    weights = weights.to(levels[0].device)
    scores = torch.zeros(batch, device=levels[0].device)
    for b in range(batch):
        for c0 in range(0, nc, chunk):
            c1 = min(nc, c0 + chunk)
            maps = []
            for level in levels:
                x = level[b].float().sigmoid()  # (na, h, w, 5 + nc)
                p = (x[..., 4:5] * x[..., 5 + c0:5 + c1]).permute(0, 3, 1, 2)  # (na, classes, h, w)
                maps.append(F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False))
            p = torch.cat(maps, 0)  # (K, classes, H, W)
            mean_entropy = _local_mean(_entropy(p)).sum(0)
            entropy_of_mean = _entropy(_local_mean(p)).sum(0)
            u = (entropy_of_mean - mean_entropy).unsqueeze(0)  # (1, classes, H, W)
            per_class = F.max_pool2d(u, REGION, stride=REGION).mean((0, 2, 3))
            scores[b] += (per_class * weights[c0:c1]).sum()
    return scores
