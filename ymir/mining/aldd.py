"""ALDD mining (Aghdam et al., ICCV 2019), extended to many classes as the YMIR YOLOv5 executor extends it.

Both variants score, for each class c, every anchor map P = sigmoid(objectness) x sigmoid(class c) by its
mutual information with its neighbourhood. With A = the mean over a window (cells or pixels outside the map
not counted) and H the binary entropy (natural log, log clamped at -100):
    U = sum over maps of [ H(A[P]) - A[H(P)] ]      (entropy of the local mean minus mean local entropy, >= 0)
U is max-pooled over 32x32-pixel regions and the region maxima are averaged: s_c. The image score is
sum_c w_c s_c, with w from `class_distribution_scores` (missing weights are 1). All images of a batch and all
classes are computed together.

- `native` (default): each map stays on its own level's grid (stride 8, 16, 32, 64) and the neighbourhood is
  3x3 cells, as the paper computes it on the network's output grid. Each level's U is weighted by
  (s_min / s_l)^2, repeated (nearest) onto the finest grid, summed, and max-pooled over blocks of 32 pixels.
  The weight keeps the levels in the proportions the reference's computation gives them: for a smooth map the
  mutual information is to second order Var / (2 p (1 - p)) over the window, and a fixed pixel window on a map
  upsampled from stride s spans 1/s of a cell per pixel, so its variance falls as 1/s^2 (equal weights let the
  coarse levels, whose 3x3 cells span most of a small input, dominate). Cost ~ 3 x sum_l (S/s_l)^2 x C
  elements: 0.1-0.2x the forward pass up to 20 classes, 0.4-0.5x with 80 classes at 640 px (on a CPU, in
  cache-sized chunks and with freed memory kept for reuse, utils/malloc.py; bench/aldd_cost.py). Rank agreement with
  `input` (Spearman over a generated pool, two models, 160 and 320 px): 0.98-0.99, against 0.90-0.95 with
  equal level weights.
- `input`: the reference executor's exact computation: every map bilinearly upsampled to the S x S network
  input and a 9x9-pixel window. ~ 9 x S^2 x C elements, 10-350x the cost of the forward pass on a CPU
  (bench/aldd_cost.py).
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

LOG = logging.getLogger(__name__)
ALDD_RESOLUTIONS = ("native", "input")  # where the neighbourhoods are taken: each level's grid, or the input's
NATIVE_WINDOW = 3  # cells of each level's own grid
INPUT_WINDOW = 9  # pixels of the upsampled maps
REGION = 32  # pixels
LEVEL_POWER = 2  # native: a level of stride s weighs (s_min / s) ** LEVEL_POWER
CHUNK_ELEMENTS = 1 << 24  # ~64 MB of float32 per intermediate map (input resolution)
NATIVE_CHUNK_ELEMENTS = 1 << 21  # ~8 MB of float32 per intermediate map (native resolution)


def class_weights(weights: Sequence[float], nc: int) -> torch.Tensor:
    """Per-class weights: given values, padded with 1.0 (with a warning) or cut to nc."""
    values = list(weights)
    if values and len(values) != nc:
        LOG.warning("class_distribution_scores has %d values for %d classes: %s", len(values), nc,
                    "padding with 1.0" if len(values) < nc else "ignoring the extra values")
    values = (values + [1.0] * nc)[:nc] if values else [1.0] * nc
    return torch.tensor(values, dtype=torch.float32)


def _negative_entropy(p: torch.Tensor) -> torch.Tensor:
    """-H(p) = p log p + (1 - p) log(1 - p), logs clamped at -100; computed in place on fresh tensors."""
    q = 1 - p
    return torch.log(p).clamp_(min=-100).mul_(p).add_(torch.log(q).clamp_(min=-100).mul_(q))


def _local_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a window x window neighbourhood of each (N, C, H, W) pixel, over the pixels that exist.
    Larger windows are done separably (rows, then columns; each pass divides by the pixels it saw, so the
    product is the 2-D count), which is faster there; 3x3 is faster in one pass."""
    half = window // 2
    if window <= 3:
        return F.avg_pool2d(x, window, stride=1, padding=half, count_include_pad=False)
    x = F.avg_pool2d(x, (window, 1), stride=1, padding=(half, 0), count_include_pad=False)
    return F.avg_pool2d(x, (1, window), stride=1, padding=(0, half), count_include_pad=False)


def _mutual_information(p: torch.Tensor, window: int) -> torch.Tensor:
    """H(A[p]) - A[H(p)], written as A[-H(p)] - (-H(A[p]))."""
    return _local_mean(_negative_entropy(p), window).sub_(_negative_entropy(_local_mean(p, window)))


def _anchor_class_maps(level: torch.Tensor, c0: int = 0, c1: int = None) -> torch.Tensor:
    """(B, na, h, w, 5 + nc) raw head output -> objectness x class probabilities as a (B * na, classes, h, w)
    view in channels-last layout (the classes are the innermost dimension, as the head lays them out)."""
    x = level.float().sigmoid()
    c1 = x.shape[-1] - 5 if c1 is None else c1
    batch, na, h, w, _ = x.shape
    return (x[..., 4:5] * x[..., 5 + c0:5 + c1]).reshape(batch * na, h, w, c1 - c0).permute(0, 3, 1, 2)


def _region_score(u: torch.Tensor, block: int, weights: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uncertainty map -> (B,): max per block x block region, mean over regions, weighted sum."""
    per_class = F.max_pool2d(u, block, stride=block, ceil_mode=True).mean((2, 3))
    return (per_class * weights.to(u.device)).sum(1)


def level_weight(rows: int, finest_rows: int, power: float = LEVEL_POWER) -> float:
    """(s_min / s) ** power for a level of `rows` cell rows when the finest level has `finest_rows`."""
    return (rows / finest_rows) ** power


def aldd_scores_native(levels: List[torch.Tensor], input_size: Tuple[int, int],
                       weights: torch.Tensor, level_power: float = LEVEL_POWER) -> torch.Tensor:
    """`levels`: raw head outputs, each (B, na, h, w, 5 + nc), before sigmoid. Returns (B,) scores.
    `level_power` 0 weighs the levels equally (bench/aldd_agreement.py compares the choices).
    On a CPU the batch is scored in chunks of about NATIVE_CHUNK_ELEMENTS class-map cells, so that a chunk's
    intermediate maps stay in the cache (bench/aldd_cost.py); a GPU takes the batch at once."""
    batch = levels[0].shape[0]
    per_image = sum(level[0, ..., 5:].numel() for level in levels)
    images = max(1, NATIVE_CHUNK_ELEMENTS // per_image)
    if batch <= images or levels[0].device.type != "cpu":
        return _native_chunk(levels, input_size, weights, level_power)
    return torch.cat([_native_chunk([level[b0:b0 + images] for level in levels], input_size, weights, level_power)
                      for b0 in range(0, batch, images)])


def _native_chunk(levels: List[torch.Tensor], input_size: Tuple[int, int], weights: torch.Tensor,
                  level_power: float) -> torch.Tensor:
    finest = max(levels, key=lambda level: level.shape[2] * level.shape[3])
    grid = (finest.shape[2], finest.shape[3])
    total = None
    for level in levels:
        batch, na = level.shape[:2]
        u = _mutual_information(_anchor_class_maps(level), NATIVE_WINDOW)  # (B * na, nc, h, w), channels-last
        u = u.reshape(batch, na, *u.shape[1:]).sum(1).mul_(level_weight(level.shape[2], grid[0], level_power))
        if tuple(u.shape[-2:]) != grid:
            u = F.interpolate(u, size=grid, mode="nearest")
        total = u if total is None else total + u
    block = max(1, round(REGION * grid[0] / input_size[0]))
    return _region_score(total, block, weights)


def aldd_scores_input(levels: List[torch.Tensor], input_size: Tuple[int, int], weights: torch.Tensor) -> torch.Tensor:
    """The reference executor's computation at the network input resolution; same arguments and result."""
    batch, nc = levels[0].shape[0], levels[0].shape[-1] - 5
    height, width = input_size
    k = sum(level.shape[1] for level in levels)
    per_image_class = k * height * width
    classes = max(1, min(nc, CHUNK_ELEMENTS // per_image_class))  # classes per chunk
    images = max(1, min(batch, CHUNK_ELEMENTS // (per_image_class * classes)))  # images per chunk
    scores = torch.zeros(batch, device=levels[0].device)
    for b0 in range(0, batch, images):
        b1 = min(batch, b0 + images)
        for c0 in range(0, nc, classes):
            c1 = min(nc, c0 + classes)
            maps = []
            for level in levels:
                n, na = b1 - b0, level.shape[1]
                p = _anchor_class_maps(level[b0:b1], c0, c1)  # (b * na, classes, h, w)
                up = F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)
                maps.append(up.reshape(n, na, *up.shape[1:]))
            p = torch.cat(maps, 1).flatten(0, 1)  # (b * K, classes, H, W)
            u = _mutual_information(p, INPUT_WINDOW).reshape(b1 - b0, k, c1 - c0, height, width).sum(1)
            scores[b0:b1] += _region_score(u, REGION, weights[c0:c1])
    return scores


def aldd_scores(levels: List[torch.Tensor], input_size: Tuple[int, int], weights: torch.Tensor,
                resolution: str = "native") -> torch.Tensor:
    if resolution not in ALDD_RESOLUTIONS:
        raise ValueError(f"ALDD resolution {resolution!r} is not one of {ALDD_RESOLUTIONS}")
    compute = aldd_scores_native if resolution == "native" else aldd_scores_input
    return compute(levels, input_size, weights)
