"""The training and validation images' cache (YOLOv5's `--cache`): each image decoded and resized once, before the
first epoch, in the main process, so that every loader worker (started after it, and kept for the whole run) and
every epoch read it. `ram` keeps the arrays in memory, shared with the workers copy-on-write; `disk` writes each one
as a `.npy` file in a temporary folder (never under /in) and reads it back. A cache that would not fit (ram: the
memory available, a container's limit included (utils.data.memory), with YOLOv5's 10 % margin; disk: the folder's
free space) says so, and training goes on without it."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from utils.data.images import ImageReadError
from utils.data.letterbox import long_side_size
from utils.data.memory import available_memory
from utils.data.sample import Sample

LOG = logging.getLogger(__name__)
SAFETY_MARGIN = 0.1  # YOLOv5's check_cache_ram: the cache must fit 1.1 times in the available memory
FILL_THREADS = 8  # decoding releases the GIL: threads fill the cache about as fast as processes would


def resized_bytes(samples: Sequence[Sample], img_size: int) -> int:
    """Bytes of every sample's image resized so that its long side is img_size (3 channels of uint8)."""
    return sum(math.prod(long_side_size(s.width, s.height, img_size)) * 3 for s in samples)


class ImageCache:
    """Resized images by sample index, in memory or as .npy files in `folder`."""

    def __init__(self, folder: Optional[Path] = None):
        self.folder = folder
        self.arrays: Dict[int, np.ndarray] = {}
        self.files: Dict[int, Path] = {}

    def get(self, index: int) -> Optional[np.ndarray]:
        if index in self.arrays:
            return self.arrays[index]
        if index in self.files:
            return np.load(self.files[index])
        return None

    def put(self, index: int, img: np.ndarray) -> None:
        if self.folder is None:
            self.arrays[index] = img
            return
        path = self.folder / f"{index}.npy"
        np.save(path, img)
        self.files[index] = path

    def close(self) -> None:
        """Removes a disk cache's folder."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.files.clear()


def build_cache(kind: str, samples: Sequence[Sample], img_size: int, read_resized: Callable[[int], np.ndarray],
                split: str = "training") -> Optional[ImageCache]:
    """A filled cache of `kind` ('ram' or 'disk') of the `split` images, or None where it would not fit (said in
    the log)."""
    needed = resized_bytes(samples, img_size)
    folder = Path(tempfile.mkdtemp(prefix="yolov5-image-cache-")) if kind == "disk" else None
    room = shutil.disk_usage(folder).free if folder is not None else available_memory()
    if room is not None and needed * (1 + SAFETY_MARGIN) > room:
        LOG.warning("--cache %s: the %d %s images need %.1f GB, %.1f GB is free: training without their cache",
                    kind, len(samples), split, needed / 1e9, room / 1e9)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return None
    cache = ImageCache(folder)

    def fill(index: int) -> None:
        with contextlib.suppress(ImageReadError):  # the loader replaces such an image and says so when it meets it
            cache.put(index, read_resized(index))

    try:
        with ThreadPoolExecutor(max_workers=min(FILL_THREADS, os.cpu_count() or 1)) as pool:
            list(pool.map(fill, range(len(samples))))
    except BaseException:  # a full disk, a signal: no half-filled folder left behind
        cache.close()
        raise
    LOG.info("--cache %s: %d %s images, %.2f GB%s", kind, len(samples), split, needed / 1e9,
             f" in {folder}" if folder is not None else "")
    return cache
