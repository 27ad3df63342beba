"""ALDD mining as the YMIR YOLOv5 executor defines it (Aghdam et al., ICCV 2019, extended to many classes).

For each class c and each anchor k of each level: the map P_k = sigmoid(objectness) x sigmoid(class c) is
bilinearly upsampled to the network input size. With A = the mean over a 9x9 window (padding not counted)
and H the binary entropy (natural log, log clamped at -100):
    U = sum_k H(A[P_k]) - sum_k A[H(P_k)]      (entropy of the local mean minus mean local entropy, >= 0)
U is max-pooled over 32x32 blocks and the block maxima are averaged: s_c. The image score is
sum_c w_c s_c, with w from `class_distribution_scores` (missing weights are 1).
All images of a batch and all classes are computed together; the work is split into chunks only to bound
memory. The 9x9 window mean is separable (rows, then columns; each divides by the pixels that exist, so the
product is the 2-D count): 18 reads per pixel instead of 81.
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
    half = WINDOW // 2
    x = F.avg_pool2d(x, (WINDOW, 1), stride=1, padding=(half, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, WINDOW), stride=1, padding=(0, half), count_include_pad=False)


def aldd_scores(levels: List[torch.Tensor], input_size: Tuple[int, int], weights: torch.Tensor) -> torch.Tensor:
    """`levels`: raw head outputs, each (B, na, h, w, 5 + nc), before sigmoid. Returns (B,) scores."""
    batch, nc = levels[0].shape[0], levels[0].shape[-1] - 5
    height, width = input_size
    k = sum(level.shape[1] for level in levels)
    per_image_class = k * height * width
    classes = max(1, min(nc, CHUNK_ELEMENTS // per_image_class))  # classes per chunk
    images = max(1, min(batch, CHUNK_ELEMENTS // (per_image_class * classes)))  # images per chunk
    weights = weights.to(levels[0].device)
    sig = [level.float().sigmoid() for level in levels]  # (B, na, h, w, 5 + nc)
    scores = torch.zeros(batch, device=levels[0].device)
    for b0 in range(0, batch, images):
        b1 = min(batch, b0 + images)
        for c0 in range(0, nc, classes):
            c1 = min(nc, c0 + classes)
            maps = []
            for x in sig:
                x = x[b0:b1]
                p = (x[..., 4:5] * x[..., 5 + c0:5 + c1]).permute(0, 1, 4, 2, 3)  # (b, na, classes, h, w)
                n, na, nk, h, w = p.shape
                up = F.interpolate(p.reshape(n * na, nk, h, w), size=(height, width), mode="bilinear",
                                   align_corners=False)
                maps.append(up.reshape(n, na, nk, height, width))
            p = torch.cat(maps, 1).flatten(0, 1)  # (b * K, classes, H, W)
            mean_entropy = _local_mean(_entropy(p))
            entropy_of_mean = _entropy(_local_mean(p))
            u = (entropy_of_mean - mean_entropy).reshape(b1 - b0, k, c1 - c0, height, width).sum(1)
            per_class = F.max_pool2d(u, REGION, stride=REGION).mean((2, 3))  # (b, classes)
            scores[b0:b1] += (per_class * weights[c0:c1]).sum(1)
    return scores
