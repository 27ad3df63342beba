"""Pictures for TensorBoard, drawn with OpenCV: image batches with boxes, PR curves, a confusion matrix."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
           (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0)]


def colour(class_id: int):
    return PALETTE[int(class_id) % len(PALETTE)]


def draw_boxes(image_chw: torch.Tensor, boxes: np.ndarray, classes: np.ndarray, names: Sequence[str],
               scores=None) -> np.ndarray:
    """RGB HWC uint8 picture of a CHW uint8 image with xyxy boxes and class names."""
    img = np.ascontiguousarray(image_chw.numpy().transpose(1, 2, 0)).copy()
    for k, (box, cls) in enumerate(zip(boxes, classes)):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        c = colour(cls)
        cv2.rectangle(img, (x1, y1), (x2, y2), c, 1)
        label = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        if scores is not None:
            label += f" {float(scores[k]):.2f}"
        cv2.putText(img, label, (x1 + 2, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, c, 1, cv2.LINE_AA)
    return img


def mosaic_of(images: Sequence[np.ndarray], columns: int = 2) -> np.ndarray:
    """Tile same-height-or-smaller RGB images into one picture."""
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    rows = (len(images) + columns - 1) // columns
    canvas = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, columns)
        canvas[r * h:r * h + img.shape[0], c * w:c * w + img.shape[1]] = img
    return canvas


def pr_curve_image(curves: Sequence, names: Sequence[str], classes: Sequence[int], ap50: Sequence[float],
                   size: int = 480) -> np.ndarray:
    """Precision (y) against recall (x) per class at IoU 0.5."""
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    margin = 40
    span = size - 2 * margin
    cv2.rectangle(img, (margin, margin), (margin + span, margin + span), (0, 0, 0), 1)
    for t in range(0, 11, 2):
        v = t / 10
        cv2.putText(img, f"{v:.1f}", (margin + int(v * span) - 8, size - margin + 15), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 0, 0), 1)
        cv2.putText(img, f"{v:.1f}", (5, margin + span - int(v * span) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                    (0, 0, 0), 1)
    cv2.putText(img, "recall", (size // 2 - 20, size - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "precision", (margin, margin - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for k, ((recall, precision), cls) in enumerate(zip(curves, classes)):
        if not len(recall):
            continue
        envelope = np.flip(np.maximum.accumulate(np.flip(precision)))
        points = np.stack([margin + recall * span, margin + span - envelope * span], 1).astype(np.int32)
        c = colour(cls)
        cv2.polylines(img, [points], False, c, 2, cv2.LINE_AA)
        name = names[int(cls)] if int(cls) < len(names) else str(cls)
        cv2.putText(img, f"{name} {ap50[k]:.3f}", (margin + 8, margin + 16 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, c, 1, cv2.LINE_AA)
    return img


def confusion_image(matrix: np.ndarray, names: Sequence[str], cell: int = 48) -> np.ndarray:
    """Column-normalised confusion matrix (true class by column), background last."""
    labels = list(names) + ["background"]
    n = matrix.shape[0]
    norm = matrix / (matrix.sum(0, keepdims=True) + 1e-9)
    margin = 90
    img = np.full((margin + n * cell + 10, margin + n * cell + 10, 3), 255, dtype=np.uint8)
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            shade = int(255 - 200 * v)
            x, y = margin + j * cell, margin + i * cell
            cv2.rectangle(img, (x, y), (x + cell, y + cell), (shade, shade, 255), -1)
            if matrix[i, j]:
                cv2.putText(img, f"{v:.2f}", (x + 6, y + cell // 2 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    for k, name in enumerate(labels):
        cv2.putText(img, name[:10], (margin + k * cell + 2, margin - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1)
        cv2.putText(img, name[:10], (4, margin + k * cell + cell // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1)
    cv2.putText(img, "true", (margin + n * cell // 2, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(img, "predicted", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return img
