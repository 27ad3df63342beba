"""Box arithmetic. Boxes are (x1, y1, x2, y2) in pixels unless a name says otherwise (xywh: centre, size)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch


def xywh_to_xyxy(x):
    y = x.clone() if isinstance(x, torch.Tensor) else np.copy(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy_to_xywh(x):
    y = x.clone() if isinstance(x, torch.Tensor) else np.copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def box_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes: an (N, M) matrix."""
    (a1, a2), (b1, b2) = a.unsqueeze(1).chunk(2, 2), b.unsqueeze(0).chunk(2, 2)
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(0).prod(2)
    return inter / ((a2 - a1).prod(2) + (b2 - b1).prod(2) - inter + eps)


def ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching rows of two (N, 4) xywh tensors: IoU minus centre-distance and aspect terms."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.chunk(4, -1), box2.chunk(4, -1)
    w1_, h1_, w2_, h2_ = w1 / 2, h1 / 2, w2 / 2, h2 / 2
    b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1_, x1 + w1_, y1 - h1_, y1 + h1_
    b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2_, x2 + w2_, y2 - h2_, y2 + h2_
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)  # enclosing box
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    # heights of at least eps in the aspect term, as YOLOv5 clamps them for corner (xyxy) input: a predicted box
    # whose size underflows to 0 (the sigmoid of a wh logit near -30, squared) would make w / h 0 / 0 and its
    # gradient NaN, which ends the training; every box of a real size (h >= eps) gives exactly the same value
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2.clamp(eps)) - torch.atan(w1 / h1.clamp(eps))).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def clip_boxes(boxes, shape: Tuple[int, int]):
    """Clip xyxy boxes in place to an image of shape (height, width)."""
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, shape[1])
        boxes[..., 1].clamp_(0, shape[0])
        boxes[..., 2].clamp_(0, shape[1])
        boxes[..., 3].clamp_(0, shape[0])
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, shape[1])
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, shape[0])
    return boxes


def unletterbox_boxes(boxes, ratio: Sequence[float], pad: Sequence[float], original_shape: Tuple[int, int]):
    """Map xyxy boxes from a letterboxed image back to the original image (height, width), clipped, in place."""
    boxes[..., [0, 2]] -= pad[0]
    boxes[..., [1, 3]] -= pad[1]
    boxes[..., [0, 2]] /= ratio[0]
    boxes[..., [1, 3]] /= ratio[1]
    return clip_boxes(boxes, original_shape)


def letterbox_geometry(shape: Tuple[int, int], new_shape: Tuple[int, int], auto: bool = False, stride: int = 32,
                       scaleup: bool = True) -> Tuple[float, Tuple[int, int], Tuple[float, float]]:
    """Scale, resized size (w, h) and padding (dw, dh per side) of YOLOv5's letterbox for an (h, w) image. A side
    that would round to 0 px (a 3 x 5000 image at 640) is 1 px: a resize to nothing fails in every library."""
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    unpadded = (max(int(round(shape[1] * r)), 1), max(int(round(shape[0] * r)), 1))
    dw, dh = new_shape[1] - unpadded[0], new_shape[0] - unpadded[1]
    if auto:
        dw, dh = dw % stride, dh % stride
    return r, unpadded, (dw / 2, dh / 2)
