"""Mining algorithms applied to a batch of the shared forward pass: one score per image (ymir.mining.registry
names them)."""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch

from utils.data.letterboxed import ImageMeta
from utils.inference import BatchOutput, ForwardPass, detect
from ymir.mining import UNREADABLE_SCORE
from ymir.mining.aldd import aldd_scores, class_weights
from ymir.mining.cald import (
    AUGMENTATIONS,
    Prediction,
    cald_metric,
    cald_score,
    class_distribution,
    class_vector,
    image_rng,
)
from ymir.mining.diverse import MIN_SCORE as DIVERSE_MIN_SCORE
from ymir.mining.diverse import Evidence, box_features, image_evidence, image_uncertainty
from ymir.mining.entropy import ENTROPY_MIN_SCORE, entropy_score, undetected_score
from ymir.mining.random_draw import random_scores

if TYPE_CHECKING:
    from ymir.config import MiningConfig


class Scorer:
    nms_floor: Optional[float] = None  # the score threshold the scorer reads boxes at (BatchOutput.above), if any

    def score_batch(self, images: torch.Tensor, out: BatchOutput, metas: List[ImageMeta],
                    keys: Sequence[str]) -> List[float]:
        raise NotImplementedError

    def score_and_describe(self, images: torch.Tensor, out: BatchOutput, metas: List[ImageMeta],
                           keys: Sequence[str]) -> Tuple[List[float], List[Optional[Evidence]]]:
        """The scores and, for an algorithm whose ranking needs the whole pool (`diverse`), each image's evidence."""
        return self.score_batch(images, out, metas, keys), [None] * len(metas)


class RandomScorer(Scorer):
    """Scores drawn once for the whole candidate list, so they do not depend on batching."""

    def __init__(self, count: int, seed: int):
        self.scores = random_scores(count, seed)

    def score_batch(self, images, out, metas, keys):
        return [float(self.scores[m.index]) for m in metas]


class EntropyScorer(Scorer):
    """The boxes NMS keeps at ENTROPY_MIN_SCORE, from the shared pass's NMS (the task's IoU threshold and max_det)."""

    nms_floor = ENTROPY_MIN_SCORE

    def score_batch(self, images, out, metas, keys):
        dets, indices = out.above(ENTROPY_MIN_SCORE)
        return [entropy_score(det[:, 4].numpy(), out.decoded[b, idx, 5:].numpy(),
                              0.0 if len(det) else best_raw_score(out.decoded[b]))
                for b, (det, idx) in enumerate(zip(dets, indices))]


def best_raw_score(decoded: torch.Tensor) -> float:
    """An image's most confident raw prediction (objectness x best class probability, before NMS), from its
    (N, 5 + nc) decoded rows. Entropy and CALD both order the images without a kept box by it, so where a
    model keeps no box anywhere in the pool the two rank the pool alike."""
    return float((decoded[:, 4] * decoded[:, 5:].amax(1)).max())


class AlddScorer(Scorer):
    def __init__(self, weights: Sequence[float], nc: int, resolution: str):
        self.weights, self.resolution = class_weights(weights, nc), resolution

    def score_batch(self, images, out, metas, keys):
        size = (images.shape[2], images.shape[3])
        return aldd_scores(out.levels, size, self.weights, self.resolution).cpu().tolist()


class CaldScorer(Scorer):
    """Reference predictions come from the shared pass; four augmented copies per image with detections are
    run through the detector in extra passes. Augmentations apply to the letterboxed network input."""

    def __init__(self, detector: ForwardPass, config: MiningConfig, label_histogram: Optional[np.ndarray]):
        self.detector, self.config = detector, config
        self.label_histogram = label_histogram

    def _predictions(self, out: BatchOutput, b: int) -> Prediction:
        det, idx = out.detections[b], out.indices[b]
        return Prediction(det[:, :4].numpy().astype(np.float64), det[:, 4].numpy().astype(np.float64),
                          class_distribution(out.decoded[b, idx, 5:].numpy()))

    def score_batch(self, images, out, metas, keys):
        cfg = self.config
        references = [self._predictions(out, b) for b in range(len(metas))]
        jobs = []  # (image row, transformed reference, augmented image)
        for b, ref in enumerate(references):
            if len(ref) == 0:
                continue
            img = images[b].permute(1, 2, 0).numpy()
            rng = image_rng(cfg.seed, keys[b])
            for augment in AUGMENTATIONS:
                aug_img, aug_boxes = augment(img, ref.boxes, rng)
                jobs.append((b, Prediction(aug_boxes, ref.scores, ref.probs), aug_img))
        augmented = []
        for start in range(0, len(jobs), cfg.batch_size_per_gpu):
            chunk = jobs[start:start + cfg.batch_size_per_gpu]
            batch = torch.from_numpy(np.stack([np.ascontiguousarray(j[2].transpose(2, 0, 1)) for j in chunk]))
            blank = [ImageMeta(0, (0, 0), (1.0, 1.0), (0.0, 0.0))] * len(chunk)
            aug_out = detect(self.detector, batch, blank, cfg.conf_thres, cfg.iou_thres, cfg.max_det)
            augmented += [self._predictions(aug_out, i) for i in range(len(chunk))]
        scores = []
        for b, ref in enumerate(references):
            pairs = [(job[1], pred) for job, pred in zip(jobs, augmented) if job[0] == b]
            metric = cald_metric(ref, pairs)
            vector = class_vector([ref] + [p for _, p in pairs], out.decoded.shape[2] - 5) \
                if self.label_histogram is not None else None
            evidence = best_raw_score(out.decoded[b]) if len(ref) == 0 else 0.0
            scores.append(cald_score(metric, vector, self.label_histogram, evidence))
        return scores


class DiverseScorer(Scorer):
    """Each image's evidence (its confident boxes, their uncertainty and neck features); the ranking itself is
    made once the whole pool is scored (ymir.mining.diverse). The score here weighs every class alike."""

    nms_floor = DIVERSE_MIN_SCORE

    def __init__(self, anchors: int):
        self.anchors = anchors

    def score_batch(self, images, out, metas, keys):
        return self.score_and_describe(images, out, metas, keys)[0]

    def score_and_describe(self, images, out, metas, keys):
        if out.features is None:
            raise ValueError("diverse mining needs a detector made with features=True")
        dets, indices = out.above(DIVERSE_MIN_SCORE)
        evidence, scores = [], []
        batch_features = box_features(out.features, indices, self.anchors)
        for b, (det, rows, features) in enumerate(zip(dets, indices, batch_features)):
            if metas[b].error is not None:  # a blank stand-in for an unreadable file: its score is set later
                evidence.append(None)
                scores.append(0.0)
                continue
            near_miss = 0.0 if len(det) else best_raw_score(out.decoded[b])
            evidence.append(image_evidence(det[:, 4].numpy(), out.decoded[b, rows, 5:].numpy(), features, near_miss))
            scores.append(image_uncertainty(evidence[-1].rows, np.ones(out.decoded.shape[2] - 5))
                          if len(det) else undetected_score(near_miss))
        return scores, evidence


__all__ = ["Scorer", "RandomScorer", "EntropyScorer", "AlddScorer", "CaldScorer", "DiverseScorer", "UNREADABLE_SCORE"]
