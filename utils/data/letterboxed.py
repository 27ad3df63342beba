"""Images made ready for a detector: read, letterboxed to a square, moved as uint8, each with where it came from
and how it was letterboxed (to map its detections back)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from utils.data.images import ImageReadError, read_image
from utils.data.letterbox import letterbox


@dataclass
class ImageMeta:
    """Where a batch row came from and how it was letterboxed."""

    index: int
    shape: Tuple[int, int]  # original (height, width); (0, 0) when unreadable
    ratio: Tuple[float, float]
    pad: Tuple[float, float]
    error: Optional[str] = None


class LetterboxedImages(Dataset):
    """Images by path, letterboxed to a square of `size`; an unreadable file gives a blank image and an error."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            img = read_image(self.paths[index])
        except ImageReadError as exc:
            blank = torch.zeros((3, self.size, self.size), dtype=torch.uint8)
            return blank, ImageMeta(index, (0, 0), (1.0, 1.0), (0.0, 0.0), str(exc))
        return to_tensor_and_meta(img, self.size, index)


def to_tensor_and_meta(img: np.ndarray, size: int, index: int = 0):
    boxed, ratio, pad = letterbox(img, size, auto=False)
    tensor = torch.from_numpy(np.ascontiguousarray(boxed[..., ::-1].transpose(2, 0, 1)))  # BGR HWC -> RGB CHW
    return tensor, ImageMeta(index, img.shape[:2], ratio, pad)


def collate(items):
    images, metas = zip(*items)
    return torch.stack(images), list(metas)
