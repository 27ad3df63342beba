"""The mining benchmark's generated images: shapes of 4 classes on a plain background or, for a share of them,
on a second one (the domain shift); empty, hard (small, low-contrast objects) and normal images; and near-duplicates
of drawn images (the same scene re-encoded, shifted a few pixels, recoloured slightly), as video frames and
re-uploads fill real pools."""
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
    scene: int = -1  # in a pool with near-duplicates: the index of the drawn image it shows (its own, if drawn)


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


def near_duplicate(rng: np.random.Generator, item: Item, scene: int) -> Item:
    """The same scene again: shifted by up to 4 px (the edge repeated), each channel's gain and offset changed by up
    to 6 % and 8 levels, saved at another JPEG quality (70-95); its boxes moved with it."""
    img = cv2.imdecode(np.frombuffer(item.jpeg, np.uint8), cv2.IMREAD_COLOR)
    dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
    moved = cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (SIZE, SIZE), borderMode=cv2.BORDER_REPLICATE)
    gain, offset = rng.uniform(0.94, 1.06, size=3), rng.uniform(-8, 8, size=3)
    recoloured = np.clip(moved.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
    quality = int(rng.integers(70, 96))
    ok, jpeg = cv2.imencode(".jpg", recoloured, [cv2.IMWRITE_JPEG_QUALITY, quality])
    boxes = [(c, min(max(x1 + dx, 0), SIZE - 1), min(max(y1 + dy, 0), SIZE - 1), min(max(x2 + dx, 0), SIZE - 1),
              min(max(y2 + dy, 0), SIZE - 1)) for c, x1, y1, x2, y2 in item.boxes]
    return item._replace(jpeg=jpeg.tobytes(), boxes=boxes, scene=scene)


def with_near_duplicates(rng: np.random.Generator, drawn: list, count: int) -> list:
    """`drawn` and `count` near-duplicates of its images (each of a drawn image chosen at random, with repeats, so
    that some scenes come several times), shuffled together; every item knows its scene."""
    scenes = [item._replace(scene=i) for i, item in enumerate(drawn)]
    copies = [near_duplicate(rng, scenes[s], s) for s in rng.integers(0, len(drawn), size=count)]
    items = scenes + copies
    return [items[i] for i in rng.permutation(len(items))]


def repeated_scenes(items) -> int:
    """How many of `items` show a scene that an earlier one of them already shows (0 without near-duplicates)."""
    seen, repeats = set(), 0
    for item in items:
        if item.scene >= 0:
            repeats += item.scene in seen
            seen.add(item.scene)
    return repeats
