"""YOLOv5's letterbox: aspect-preserving resize and grey (114) padding to a target size."""
from __future__ import annotations

import math
from typing import Tuple, Union

import cv2
import numpy as np

from utils.boxes import letterbox_geometry

PAD_VALUE = 114


def letterbox(img: np.ndarray, new_shape: Union[int, Tuple[int, int]] = 640, auto: bool = False, stride: int = 32,
              scaleup: bool = True, color=(PAD_VALUE, PAD_VALUE, PAD_VALUE)):
    """Returns (image, (ratio_w, ratio_h), (pad_w, pad_h)) with the same rounding as YOLOv5.

    auto=False pads to exactly new_shape; auto=True pads only up to the next multiple of stride.
    """
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r, unpadded, (dw, dh) = letterbox_geometry(img.shape[:2], new_shape, auto, stride, scaleup)
    if (img.shape[1], img.shape[0]) != unpadded:
        img = cv2.resize(img, unpadded, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, (r, r), (dw, dh)


def long_side_size(width: int, height: int, img_size: int) -> Tuple[int, int]:
    """(width, height) of an image resized so that its long side is img_size, rounded up as YOLOv5's load_image."""
    r = img_size / max(width, height, 1)
    return math.ceil(width * r), math.ceil(height * r)
