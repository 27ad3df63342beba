"""CALD mining (Yu et al., "Consistency-based Active Learning for Object Detection", CVPR-W 2022).

Stage 1, as in the paper: the detector's boxes on the original image are compared with its boxes on four
augmented copies (horizontal flip, cutout, resize x0.8, rotation 5 degrees). For each reference box k,
transformed like the image, the augmented box with the highest IoU is its match:
    C_b = IoU,  C_s = (s_k + s'_k) / 2 * (1 - JS(p_k || p'_k)),  m_k = |C_b + C_s - BETA|
where s is the detection score and p the box's class distribution (class probabilities rescaled to sum to 1;
the JS divergence uses the full vectors). Per augmentation the consistency is min(1, min_k m_k), taken once;
an augmentation with no detection gives 0. The image metric is the mean over augmentations, and an image
without detections has metric 0. The paper selects the smallest metrics first; our score is 1 - metric, so
the least consistent images (and those without detections, as in the paper) come first.

Deviations from the paper, all deliberate:
- the detector is YOLOv5: the "class distribution" is its independent sigmoid class probabilities normalised,
  and the detection score is objectness x best class probability;
- the paper leaves the order among images without detections open (they all tie at metric 0); we add to their
  score the strongest raw candidate the detector saw below `conf_thres` (objectness x class probability), so
  images where it nearly found something come before plain background;
- `cald_undetected_share` (default 1: the paper's order) caps the share of images without detections at every
  top of the ranking (`share_undetected`): a detector that already knows the domain finds nothing mostly on
  plain background, and the paper's rule would spend the whole budget there (bench/RESULTS.md);
- randomness (cutout) is seeded per image from the config `seed` and the image path, so a run is
  reproducible and independent of batching or sharding;
- stage 2 (class-distribution diversity, `cald_class_diversity`) needs YMIR's budget, which the executor is
  never told; instead of re-sorting a 1.2 x budget shortlist it blends, for every image, the stage-1 score
  with the JS divergence (in bits, so in [0, 1]) between the image's class vector (per-class maximum score
  over the original and augmented predictions, softmaxed) and the softmaxed class histogram of the labels the
  model was trained on: score = (stage-1 score + divergence) / 2. Without a histogram, stage 1 alone is used.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ymir.mining.ordering import interleaved_order

BETA = 1.3
RESIZE_FACTOR = 0.8
ROTATION_DEGREES = 5.0
CUTOUT_PATCHES = 2
CUTOUT_SIDE = (0.05, 0.2)
CUTOUT_LOSS = (0.1, 0.4)  # a patch may cover at most 40 % of any box and must cover >= 10 % of one
CUTOUT_ATTEMPTS = 50
_EPS = 1e-12


@dataclass
class Prediction:
    """One image's detections: boxes (n, 4) xyxy pixels, scores (n,), class distributions (n, nc)."""

    boxes: np.ndarray
    scores: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)


def class_distribution(class_probs: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(class_probs, dtype=np.float64), _EPS, None)
    return q / q.sum(-1, keepdims=True)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (natural log) between matching rows of two distributions."""
    p, q = np.clip(p, _EPS, None), np.clip(q, _EPS, None)
    m = (p + q) / 2
    js = 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    return np.maximum(js, 0.0)


def pairwise_intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    return np.clip(rb - lt, 0, None).prod(2)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inter = pairwise_intersection(a, b)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9)


def augmentation_consistency(reference: Prediction, augmented: Prediction) -> float:
    """min(1, min_k m_k) for reference boxes already transformed like the image; 0 without augmented boxes."""
    if len(augmented) == 0:
        return 0.0
    iou = pairwise_iou(reference.boxes, augmented.boxes)
    match = iou.argmax(1)
    box_consistency = iou[np.arange(len(reference)), match]
    score_consistency = (reference.scores + augmented.scores[match]) / 2 * (
        1 - js_divergence(reference.probs, augmented.probs[match]))
    instance = np.abs(box_consistency + score_consistency - BETA)
    return float(min(1.0, instance.min()))


def cald_metric(reference: Prediction, per_augmentation: Sequence[Tuple[Prediction, Prediction]]) -> float:
    """Mean consistency over augmentations, each given as (transformed reference, augmented prediction)."""
    if len(reference) == 0:
        return 0.0
    return float(np.mean([augmentation_consistency(ref, aug) for ref, aug in per_augmentation]))


# --- augmentations: (image, boxes, rng) -> (augmented image, transformed boxes); same image size ---

def flip(img: np.ndarray, boxes: np.ndarray, rng=None):
    width = img.shape[1]
    out = boxes.copy()
    out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return np.ascontiguousarray(img[:, ::-1]), out


def cutout(img: np.ndarray, boxes: np.ndarray, rng: np.random.Generator):
    """Up to two black patches, each covering at most 40 % of every box and at least 10 % of some box."""
    out = img.copy()
    height, width = img.shape[:2]
    areas = np.clip((boxes[:, 2:] - boxes[:, :2]).prod(1), 1e-9, None)
    for _ in range(CUTOUT_PATCHES):
        for _ in range(CUTOUT_ATTEMPTS):
            ph = int(rng.uniform(*CUTOUT_SIDE) * height)
            pw = int(rng.uniform(*CUTOUT_SIDE) * width)
            y0, x0 = int(rng.integers(0, max(1, height - ph))), int(rng.integers(0, max(1, width - pw)))
            patch = np.array([[x0, y0, x0 + pw, y0 + ph]], dtype=np.float64)
            covered = pairwise_intersection(patch, boxes)[0] / areas  # fraction of each box under the patch
            if len(boxes) and CUTOUT_LOSS[0] <= covered.max() <= CUTOUT_LOSS[1]:
                out[y0:y0 + ph, x0:x0 + pw] = 0
                break
    return out, boxes.copy()


def shrink(img: np.ndarray, boxes: np.ndarray, rng=None):
    """The image scaled by 0.8, pasted at the top-left of a black canvas of the original size."""
    height, width = img.shape[:2]
    small = cv2.resize(img, (int(width * RESIZE_FACTOR), int(height * RESIZE_FACTOR)), interpolation=cv2.INTER_LINEAR)
    out = np.zeros_like(img)
    out[:small.shape[0], :small.shape[1]] = small
    return out, boxes * RESIZE_FACTOR


def rotate(img: np.ndarray, boxes: np.ndarray, rng=None):
    """Rotation by 5 degrees about the centre (black corners); boxes become the hull of their rotated corners."""
    height, width = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), ROTATION_DEGREES, 1.0)
    out = cv2.warpAffine(img, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    corners = np.stack([boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]], 1)  # (n, 4, 2)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    hull = np.concatenate([moved.min(1), moved.max(1)], 1)
    hull[:, [0, 2]] = hull[:, [0, 2]].clip(0, width)
    hull[:, [1, 3]] = hull[:, [1, 3]].clip(0, height)
    return out, hull


AUGMENTATIONS: List[Callable] = [flip, cutout, shrink, rotate]


def image_rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def class_vector(predictions: Sequence[Prediction], nc: int) -> np.ndarray:
    """Per-class maximum detection score, averaged over the given predictions."""
    vectors = []
    for pred in predictions:
        v = np.zeros(nc)
        if len(pred):
            cls = pred.probs.argmax(1)
            np.maximum.at(v, cls, pred.scores)
        vectors.append(v)
    return np.mean(vectors, 0)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def diversity(image_class_vector: np.ndarray, label_histogram: np.ndarray) -> float:
    """JS divergence in bits (in [0, 1]) between softmaxed class vector and softmaxed label histogram."""
    hist = label_histogram / max(label_histogram.sum(), _EPS)
    return float(js_divergence(softmax(image_class_vector)[None], softmax(hist)[None])[0] / np.log(2))


def cald_score(metric: float, class_vec: Optional[np.ndarray] = None,
               label_histogram: Optional[np.ndarray] = None, undetected_evidence: float = 0.0) -> float:
    """`undetected_evidence`: for an image without detections, its strongest candidate below the threshold
    (0 for images with detections), which orders those images among themselves."""
    stage1 = 1.0 - metric + undetected_evidence
    if class_vec is None or label_histogram is None:
        return stage1
    return (stage1 + diversity(class_vec, label_histogram)) / 2


def share_undetected(scores: np.ndarray, undetected: np.ndarray, share: float) -> np.ndarray:
    """Re-score the images without detections so that they take about `share` of every top of the ranking.

    The paper puts every image without detections first. When most of them are plain background (a detector
    that already knows the domain finds nothing because there is nothing), they fill the whole budget. With
    `share` < 1 they are interleaved with the images that have detections, which keep their scores: going down
    the ranking, place p goes to the next image without detections (the strongest near miss first) when that
    keeps their count within `share` x p, so with share 0.1 they take places 10, 20, 30, ... Each one is then
    given a score between its neighbours', so the sort order realises the interleaving. `share` 1 leaves the
    scores (the paper's order); 0 puts these images after all others. Scores stay >= 0 when they were.
    """
    scores = np.asarray(scores, dtype=np.float64)
    undetected = np.asarray(undetected, dtype=bool)
    if share >= 1.0 or not undetected.any() or undetected.all():
        return scores.copy()
    detected = np.flatnonzero(~undetected)
    detected = detected[np.argsort(-scores[detected], kind="stable")]
    missed = np.flatnonzero(undetected)
    missed = missed[np.argsort(-scores[missed], kind="stable")]
    order = interleaved_order(detected, missed, share).tolist()
    out = scores.copy()
    run: List[int] = []  # consecutive images without detections, placed between two detected neighbours
    above = None
    for index in order + [None]:
        if index is not None and undetected[index]:
            run.append(index)
            continue
        if run:
            below = scores[index] if index is not None else min(0.0, scores[detected].min())
            top = scores[above] if above is not None else below + 1.0
            for i, j in enumerate(run, 1):
                out[j] = top - (top - below) * i / (len(run) + 1)
            run = []
        above = index
    return out
