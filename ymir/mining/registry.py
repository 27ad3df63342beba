"""The mining algorithms by name: how each scores a batch of the shared forward pass, whether it needs the model,
and how it finalises the ranking once every shard's scores are gathered. The config check, the task and the
scorers all read this one table."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence

import numpy as np

from utils.inference import ForwardPass
from ymir.mining import diverse
from ymir.mining.cald import share_undetected
from ymir.mining.diverse import Evidence
from ymir.mining.scorers import AlddScorer, CaldScorer, DiverseScorer, EntropyScorer, RandomScorer, Scorer

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
    anchors: int = 3  # per cell and level, as every YOLOv5 head has


@dataclass(frozen=True)
class GatheredScores:
    """The readable candidates of the whole pool, once every shard's results are gathered."""

    scores: np.ndarray
    undetected: np.ndarray  # no detection kept at conf_thres
    evidence: Sequence[Optional[Evidence]]  # from scorers that describe images (diverse), else None each
    nc: int
    class_ap: Optional[Sequence[Optional[float]]] = None  # AP@0.5 per class of the model, where recorded
    labelled_looks: Optional[np.ndarray] = None  # descriptors of the model's labelled images, where recorded


def keep_scores(config: MiningConfig, pool: GatheredScores) -> np.ndarray:
    return pool.scores


def cald_finalise(config: MiningConfig, pool: GatheredScores) -> np.ndarray:
    """CALD's share of images without detections (`cald_undetected_share`) needs the whole ranking."""
    return share_undetected(pool.scores, pool.undetected, config.cald_undetected_share)


def diverse_finalise(config: MiningConfig, pool: GatheredScores) -> np.ndarray:
    """The class difficulties and the farthest-point order need the whole pool."""
    return diverse.rank(list(pool.evidence), pool.nc, pool.class_ap, config.diverse_empty_share, pool.labelled_looks)


@dataclass(frozen=True)
class MiningAlgorithm:
    """`needs_model` False: the scorer needs no forward pass and holds the whole pool's `scores` when made."""

    name: str
    needs_model: bool
    make: Callable[[ScorerInputs], Scorer]
    finalise: Callable[[MiningConfig, GatheredScores], np.ndarray] = keep_scores
    needs_features: bool = False  # the detector also returns the neck's maps (utils.neck_features)


ALGORITHMS: Dict[str, MiningAlgorithm] = {a.name: a for a in (
    MiningAlgorithm("random", False, lambda i: RandomScorer(i.count, i.config.seed)),
    MiningAlgorithm("entropy", True, lambda i: EntropyScorer()),
    MiningAlgorithm("aldd", True, lambda i: AlddScorer(i.config.class_distribution_scores, i.nc,
                                                       i.config.aldd_resolution)),
    MiningAlgorithm("cald", True, lambda i: CaldScorer(i.detector, i.config, i.label_histogram
                                                       if i.config.cald_class_diversity else None),
                    finalise=cald_finalise),
    MiningAlgorithm("diverse", True, lambda i: DiverseScorer(i.anchors),
                    finalise=diverse_finalise, needs_features=True),
)}
NAMES = tuple(ALGORITHMS)


def make_scorer(inputs: ScorerInputs) -> Scorer:
    return ALGORITHMS[inputs.config.mining_algorithm].make(inputs)


def rank_scores(config: MiningConfig, pool: GatheredScores) -> np.ndarray:
    """The final scores of all readable candidates, once every shard's are gathered."""
    return ALGORITHMS[config.mining_algorithm].finalise(config, pool)
