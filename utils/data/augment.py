"""Training augmentations of YOLOv5: mosaic, random perspective, HSV jitter, flips.

Pure functions on (image, labels) with an explicit numpy Generator. Images are HWC BGR uint8; labels are
(n, 5) float arrays: class, x1, y1, x2, y2 in pixels of the image they come with.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple

import cv2
import numpy as np

from utils.data.letterbox import PAD_VALUE


def augment_hsv(img: np.ndarray, rng: np.random.Generator, hgain: float, sgain: float, vgain: float) -> None:
    """Random gains on hue, saturation and value, in place, through lookup tables."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(img.dtype)
    lut_sat = np.clip(x * r[1], 0, 255).astype(img.dtype)
    lut_val = np.clip(x * r[2], 0, 255).astype(img.dtype)
    merged = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(merged, cv2.COLOR_HSV2BGR, dst=img)


def box_candidates(before: np.ndarray, after: np.ndarray, wh_thr: float = 2, ar_thr: float = 100,
                   area_thr: float = 0.1, eps: float = 1e-16) -> np.ndarray:
    """Boxes (4, n) still worth training on after a transform: > 2 px, aspect < 100, >= 10 % of their area."""
    w1, h1 = before[2] - before[0], before[3] - before[1]
    w2, h2 = after[2] - after[0], after[3] - after[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def random_perspective(img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, degrees: float = 10,
                       translate: float = 0.1, scale: float = 0.1, shear: float = 10, perspective: float = 0.0,
                       border: Tuple[int, int] = (0, 0)) -> Tuple[np.ndarray, np.ndarray]:
    """Random rotation, scale, shear, translation (and perspective) of image and boxes; the output is the
    input size plus 2 x border (a negative border crops, as after a mosaic)."""
    height = img.shape[0] + border[0] * 2
    width = img.shape[1] + border[1] * 2
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -img.shape[1] / 2, -img.shape[0] / 2
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    rot = np.eye(3)
    angle, s = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(angle=angle, center=(0, 0), scale=s)
    shr = np.eye(3)
    shr[0, 1] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    shr[1, 0] = math.tan(rng.uniform(-shear, shear) * math.pi / 180)
    trans = np.eye(3)
    trans[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    trans[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    m = trans @ shr @ rot @ persp @ centre
    if border[0] != 0 or border[1] != 0 or (m != np.eye(3)).any():
        fill = (PAD_VALUE, PAD_VALUE, PAD_VALUE)
        if perspective:
            img = cv2.warpPerspective(img, m, dsize=(width, height), borderValue=fill)
        else:
            img = cv2.warpAffine(img, m[:2], dsize=(width, height), borderValue=fill)
    n = len(labels)
    if n:
        xy = np.ones((n * 4, 3))
        xy[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # the four corners
        xy = xy @ m.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.concatenate((x.min(1), y.min(1), x.max(1), y.max(1))).reshape(4, n).T
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=0.10)
        labels = labels[keep]
        labels[:, 1:5] = new[keep]
    return img, labels


def mosaic(load: Callable[[int], Tuple[np.ndarray, np.ndarray]], indices: Sequence[int], size: int,
           rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Four images around a random centre on a 2 x size canvas (grey 114); labels moved with them.

    `load(i)` returns an image resized so its long side is `size`, and its labels in its pixels.
    """
    border = -size // 2
    yc, xc = (int(rng.uniform(-border, 2 * size + border)) for _ in range(2))
    canvas = np.full((size * 2, size * 2, 3), PAD_VALUE, dtype=np.uint8)
    all_labels = []
    for position, index in enumerate(indices):
        img, labels = load(index)
        h, w = img.shape[:2]
        if position == 0:  # top left
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif position == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, size * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif position == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(size * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, size * 2), min(size * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        shifted = labels.copy()
        shifted[:, [1, 3]] += x1a - x1b
        shifted[:, [2, 4]] += y1a - y1b
        all_labels.append(shifted)
    labels = np.concatenate(all_labels, 0) if all_labels else np.zeros((0, 5))
    labels[:, 1:] = labels[:, 1:].clip(0, 2 * size)
    return canvas, labels


def flip_horizontal(img: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    width = img.shape[1]
    out = labels.copy()
    out[:, 1], out[:, 3] = width - labels[:, 3], width - labels[:, 1]
    return cv2.flip(img, 1), out  # numpy's reversed copy of the same pixels takes 30x longer


def flip_vertical(img: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    height = img.shape[0]
    out = labels.copy()
    out[:, 2], out[:, 4] = height - labels[:, 4], height - labels[:, 2]
    return cv2.flip(img, 0), out
