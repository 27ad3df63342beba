"""Orders of candidates built from more than a score: two lists interleaved at a share, and a weighted
farthest-point walk in which every prefix is spread out."""
from __future__ import annotations

from typing import Optional

import numpy as np


def interleaved_order(main: np.ndarray, side: np.ndarray, share: float) -> np.ndarray:
    """`main` and `side` (each already in its own order) merged so that `side` takes about `share` of every top
    of the result: going down, place p goes to the next of `side` when that keeps its count within share x p
    (share 0.1: places 10, 20, 30, ...), or when `main` is spent. Share 1 puts `side` first, 0 last."""
    main, side = np.asarray(main, dtype=int), np.asarray(side, dtype=int)
    order, taken = [], 0
    for place in range(1, len(main) + len(side) + 1):
        if taken < len(side) and (taken + 1 <= share * place + 1e-9 or len(order) - taken == len(main)):
            order.append(side[taken])
            taken += 1
        else:
            order.append(main[len(order) - taken])
    return np.array(order, dtype=int)


def farthest_point_order(looks: np.ndarray, weights: np.ndarray, placed: Optional[np.ndarray] = None,
                         chunk: int = 4096) -> np.ndarray:
    """The rows of `looks` (unit vectors, or zero) in greedy weighted farthest-point order: each time the row whose
    weight times its cosine distance (1 - cosine, in [0, 2]) to the nearest row already placed is largest; ties go
    to the lower index. Without `placed` (unit rows placed before the walk begins: the labelled images), the
    heaviest row comes first. A row equal to a placed one gains nothing and waits for the end."""
    m = len(looks)
    if m == 0:
        return np.zeros(0, dtype=int)
    weights = np.asarray(weights, dtype=np.float64)
    nearest = np.full(m, 2.0)  # the largest cosine distance: with nothing placed, the heaviest row leads
    if placed is not None:
        for start in range(0, len(placed), chunk):  # bounded memory: m x chunk similarities at a time
            nearest = np.minimum(nearest, 1.0 - (looks @ placed[start:start + chunk].T).max(axis=1))
    order = []
    unplaced = np.ones(m, dtype=bool)
    for _ in range(m):
        gains = np.where(unplaced, weights * np.maximum(nearest, 0.0), -np.inf)
        chosen = int(np.argmax(gains))
        order.append(chosen)
        unplaced[chosen] = False
        nearest = np.minimum(nearest, 1.0 - looks @ looks[chosen])
    return np.array(order, dtype=int)
