"""`random` mining: a seeded uniform draw per candidate, no model needed (the baseline the others must beat)."""
from __future__ import annotations

import numpy as np


def random_scores(count: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) scores, reproducible for a seed."""
    return np.random.default_rng(seed).random(count)
