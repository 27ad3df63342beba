"""The engine's input: one image and its ground truth, as the data pipeline, the trainer and validation read it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Sample:
    """One image with its ground truth: boxes in displayed-image pixels, xyxy, exclusive corners."""

    image: Path
    width: int
    height: int
    orientation: int  # EXIF orientation of the stored file (1: as stored)
    boxes: np.ndarray  # float32 (n, 4)
    classes: np.ndarray  # int64 (n,)
