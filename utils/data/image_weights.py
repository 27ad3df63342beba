"""`--image-weights`: draw each epoch's training images in proportion to how much their classes still need.

As YOLOv5: a class weighs the inverse of its label count (normalised), times (1 - its mAP@0.5:0.95 at the last
validation)^2; an image weighs the sum of its labels' class weights (so an image without labels is never drawn);
each epoch draws as many images as the set holds, with replacement.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from utils.data.sample import Sample
from utils.data.train_data import class_histogram


def class_weights(samples: Sequence[Sample], nc: int) -> np.ndarray:
    """Inverse label frequency per class, summing to 1 (a class without labels counts as one label)."""
    counts = np.asarray(class_histogram(samples, nc), dtype=np.float64)
    counts[counts == 0] = 1
    weights = 1.0 / counts
    return weights / weights.sum()


def image_weights(samples: Sequence[Sample], weights_per_class: np.ndarray) -> np.ndarray:
    """Per image: the sum over its labels of their class weight."""
    nc = len(weights_per_class)
    return np.array([(np.bincount(np.asarray(s.classes, dtype=np.int64), minlength=nc) * weights_per_class).sum()
                     for s in samples], dtype=np.float64)


def epoch_class_weights(base: np.ndarray, per_class_map: Optional[np.ndarray]) -> np.ndarray:
    """`base` scaled by (1 - mAP@0.5:0.95)^2 per class; before any validation every class keeps its base."""
    if per_class_map is None:
        return base
    return base * (1.0 - per_class_map) ** 2


class ImageWeightedSampler(Sampler):
    """Draws len(dataset) indices with replacement by weight, seeded by (seed, epoch); under DDP every rank draws
    the same list and takes every world-th index, as DistributedSampler does."""

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.weights = np.ones(size, dtype=np.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_weights(self, weights: np.ndarray) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        self.weights = weights if weights.sum() > 0 else np.ones(self.size)  # no labels at all: uniform

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        drawn = rng.choice(self.size, size=len(self) * self.world, p=self.weights / self.weights.sum())
        return iter(drawn[self.rank::self.world].tolist())

    def __len__(self) -> int:
        return math.ceil(self.size / self.world)
