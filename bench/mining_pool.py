"""The mining benchmark's generated images: shapes of 4 classes on a plain background or, for a share of them,
on a second one (the domain shift); empty, hard (small, low-contrast objects) and normal images."""
from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

CLASSES = ("disc", "box", "triangle", "star")
FREQUENCIES = (0.55, 0.30, 0.12, 0.03)
SIZE = 160


class Item(NamedTuple):
    jpeg: bytes
    boxes: list  # (class, x1, y1, x2, y2), corners inclusive
    kind: str  # empty, hard or normal
    shifted: bool  # drawn on the second background (the domain the initial set and the source set lack)


def background(rng: np.random.Generator, shifted: bool) -> np.ndarray:
    """Grey blurred noise; the shifted domain is a coarse, saturated colour texture with fine noise on top."""
    if not shifted:
        return cv2.GaussianBlur(rng.integers(80, 150, size=(SIZE, SIZE, 3), dtype=np.uint8), (5, 5), 0)
    coarse = rng.integers(40, 256, size=(SIZE // 20, SIZE // 20, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(img + rng.integers(-30, 31, size=img.shape), 0, 255).astype(np.uint8)


def draw(rng: np.random.Generator, shift: float = 0.0, frequencies=FREQUENCIES) -> Item:
    """One generated image; with probability `shift` on the shifted background (no extra draw when shift is 0, so
    the pools of the earlier protocols are unchanged); `frequencies` are the classes' shares (the same draws for any
    frequencies)."""
    shifted = bool(shift > 0 and rng.random() < shift)
    img = background(rng, shifted)
    kind = rng.choice(["empty", "hard", "normal"], p=[0.15, 0.20, 0.65])
    boxes = []
    count = 0 if kind == "empty" else int(np.clip(rng.poisson(2.0), 1, 5))
    for _ in range(count):
        cls = int(rng.choice(len(CLASSES), p=frequencies))
        side = int(rng.integers(8, 15) if kind == "hard" else rng.integers(20, 56))
        x1, y1 = int(rng.integers(0, SIZE - side)), int(rng.integers(0, SIZE - side))
        x2, y2 = x1 + side - 1, y1 + side - 1
        if any(min(x2, b[3]) > max(x1, b[1]) and min(y2, b[4]) > max(y1, b[2]) for b in boxes):
            continue
        base = int(img[y1:y2 + 1, x1:x2 + 1].mean())
        colour = tuple(int(np.clip(base + rng.choice([-1, 1]) * rng.integers(25, 45), 0, 255)) for _ in range(3)) \
            if kind == "hard" else tuple(int(c) for c in rng.integers(0, 90, size=3))
        cx, cy, r = (x1 + x2) // 2, (y1 + y2) // 2, side // 2
        if cls == 0:
            cv2.circle(img, (cx, cy), r, colour, -1)
        elif cls == 1:
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, -1)
        elif cls == 2:
            cv2.fillPoly(img, [np.array([[cx, y1], [x1, y2], [x2, y2]], np.int32)], colour)
        else:
            angles = np.arange(10) * np.pi / 5 - np.pi / 2
            radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
            points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
            cv2.fillPoly(img, [points], colour)
        boxes.append((cls, x1, y1, x2, y2))
    ok, jpeg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return Item(jpeg.tobytes(), boxes, str(kind), shifted)
