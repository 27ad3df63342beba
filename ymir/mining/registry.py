"""The mining algorithms by name: how each scores a batch of the shared forward pass, whether it needs the model,
and how it finalises the ranking once every shard's scores are gathered. The config check, the task and the
scorers all read this one table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional

import numpy as np

from utils.inference import ForwardPass
from ymir.mining.cald import share_undetected
from ymir.mining.scorers import AlddScorer, CaldScorer, EntropyScorer, RandomScorer, Scorer

if TYPE_CHECKING:
    from ymir.config import MiningConfig


@dataclass(frozen=True)
class ScorerInputs:
    """What a scorer may be built from: the task's settings, the pool's size, the model and what it knows."""

    config: MiningConfig
    count: int
    detector: Optional[ForwardPass]
    nc: int
    label_histogram: Optional[np.ndarray]  # the model's training labels per class, when its checkpoint has them


def keep_scores(config: MiningConfig, scores: np.ndarray, undetected: np.ndarray) -> np.ndarray:
    return scores


def cald_finalise(config: MiningConfig, scores: np.ndarray, undetected: np.ndarray) -> np.ndarray:
    """CALD's share of images without detections (`cald_undetected_share`) needs the whole ranking."""
    return share_undetected(scores, undetected, config.cald_undetected_share)


@dataclass(frozen=True)
class MiningAlgorithm:
    """`needs_model` False: the scorer needs no forward pass and holds the whole pool's `scores` when made."""

    name: str
    needs_model: bool
    make: Callable[[ScorerInputs], Scorer]
    finalise: Callable[[MiningConfig, np.ndarray, np.ndarray], np.ndarray] = keep_scores


ALGORITHMS: Dict[str, MiningAlgorithm] = {a.name: a for a in (
    MiningAlgorithm("random", False, lambda i: RandomScorer(i.count, i.config.seed)),
    MiningAlgorithm("entropy", True, lambda i: EntropyScorer(i.config.iou_thres, i.config.max_det)),
    MiningAlgorithm("aldd", True, lambda i: AlddScorer(i.config.class_distribution_scores, i.nc,
                                                       i.config.aldd_resolution)),
    MiningAlgorithm("cald", True, lambda i: CaldScorer(i.detector, i.config, i.label_histogram
                                                       if i.config.cald_class_diversity else None),
                    finalise=cald_finalise),
)}
NAMES = tuple(ALGORITHMS)


def make_scorer(inputs: ScorerInputs) -> Scorer:
    return ALGORITHMS[inputs.config.mining_algorithm].make(inputs)


def rank_scores(config: MiningConfig, scores: np.ndarray, undetected: np.ndarray) -> np.ndarray:
    """The final scores of all readable candidates, once every shard's are gathered."""
    return ALGORITHMS[config.mining_algorithm].finalise(config, scores, undetected)
