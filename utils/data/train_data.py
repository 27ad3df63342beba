"""Datasets for training and validation: samples in, uint8 image tensors and normalised labels out."""
from __future__ import annotations

import logging
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from utils.boxes import xyxy_to_xywh
from utils.data.augment import augment_hsv, flip_horizontal, flip_vertical, mosaic, random_perspective
from utils.data.image_cache import ImageCache, build_cache
from utils.data.images import ImageReadError, read_image
from utils.data.letterbox import letterbox, long_side_size
from utils.data.letterboxed import ImageMeta
from utils.data.sample import Sample

LOG = logging.getLogger(__name__)


def to_chw_rgb(img: np.ndarray) -> torch.Tensor:
    """HWC BGR -> CHW RGB, one plane at a time (4x faster than numpy's strided copy)."""
    planes = np.empty((3, *img.shape[:2]), dtype=img.dtype)
    for plane, channel in zip(planes, (2, 1, 0)):
        cv2.extractChannel(img, channel, dst=plane)
    return torch.from_numpy(planes)


def normalised_xywh(labels: np.ndarray, width: int, height: int, eps: float = 1e-3) -> np.ndarray:
    """(n, 5) class + pixel xyxy -> (n, 6) [0, class, cx, cy, w, h] normalised, boxes clipped to the image."""
    out = np.zeros((len(labels), 6), dtype=np.float32)
    if len(labels):
        boxes = labels[:, 1:5].astype(np.float64)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width - eps)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height - eps)
        xywh = xyxy_to_xywh(boxes)
        xywh[:, [0, 2]] /= width
        xywh[:, [1, 3]] /= height
        out[:, 1] = labels[:, 0]
        out[:, 2:] = xywh
    return out


def rect_batch_shapes(aspect_ratios: np.ndarray, batch_size: int, img_size: int, stride: int,
                      pad: float) -> np.ndarray:
    """(h, w) per batch for images ordered by aspect ratio (h / w), as YOLOv5 computes them."""
    batches = int(math.ceil(len(aspect_ratios) / batch_size))
    shapes = np.ones((batches, 2))
    for i in range(batches):
        ar = aspect_ratios[i * batch_size:(i + 1) * batch_size]
        lo, hi = ar.min(), ar.max()
        if hi < 1:
            shapes[i] = [hi, 1]
        elif lo > 1:
            shapes[i] = [1, 1 / lo]
    return np.ceil(shapes * img_size / stride + pad).astype(int) * stride


class SampleImages:
    """Reads samples' images (EXIF-correct) resized so that the long side is img_size, with their labels."""

    def __init__(self, samples: Sequence[Sample], img_size: int, augment: bool, single_cls: bool = False):
        self.samples, self.img_size, self.augment, self.single_cls = list(samples), img_size, augment, single_cls
        self.cache: Optional[ImageCache] = None

    def use_cache(self, kind: str, split: str = "training") -> None:
        """Decodes and resizes every image once, now, into a `kind` cache (utils.data.image_cache)."""
        self.cache = build_cache(kind, self.samples, self.img_size, self.read_resized, split)

    def __len__(self) -> int:
        return len(self.samples)

    def labels(self, index: int) -> np.ndarray:
        s = self.samples[index]
        classes = np.zeros(len(s.classes)) if self.single_cls else s.classes
        return np.concatenate([classes[:, None].astype(np.float64), s.boxes.astype(np.float64)], 1)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """(image, labels in its pixels); an image that fails to decode is replaced by the next one."""
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                img = self._read_resized(i)
            except ImageReadError as exc:
                LOG.warning("training image %s cannot be decoded (%s): using another image in its place",
                            self.samples[i].image, exc)
                continue
            s = self.samples[i]
            labels = self.labels(i)
            labels[:, [1, 3]] *= img.shape[1] / s.width
            labels[:, [2, 4]] *= img.shape[0] / s.height
            return img, labels
        raise ImageReadError("no image of the split can be decoded")

    def _read_resized(self, i: int) -> np.ndarray:
        cached = self.cache.get(i) if self.cache is not None else None
        return cached if cached is not None else self.read_resized(i)

    def read_resized(self, i: int) -> np.ndarray:
        """Sample i's image, decoded and resized so that its long side is img_size (as YOLOv5 caches it)."""
        s = self.samples[i]
        img = read_image(s.image, s.orientation)
        r = self.img_size / max(img.shape[:2])
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            img = cv2.resize(img, long_side_size(img.shape[1], img.shape[0], self.img_size), interpolation=interp)
        return img


class TrainImages(Dataset):
    """Mosaic + random perspective + HSV + flips (with hyp probabilities), or letterbox only when not augmenting.

    Randomness comes from a generator seeded by (seed, epoch, index): a run is reproducible whatever the
    number of loader workers. Set `epoch` before each epoch.
    """

    def __init__(self, samples: Sequence[Sample], img_size: int, hyp: Dict[str, float], augment: bool = True,
                 seed: int = 0, single_cls: bool = False, rect: bool = False, batch_size: int = 16, stride: int = 32):
        self.images = SampleImages(samples, img_size, augment, single_cls)
        self.img_size, self.hyp, self.augment, self.seed = img_size, hyp, augment, seed
        self.epoch = 0
        self.rect = rect and not augment
        self.batch_shapes = None
        if rect:
            ar = np.array([s.height / s.width for s in samples])
            order = ar.argsort()
            self.images.samples = [self.images.samples[i] for i in order]
            self.batch_shapes = rect_batch_shapes(ar[order], batch_size, img_size, stride, pad=0.0)
            self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.images)

    @property
    def samples(self):
        return self.images.samples

    def __getitem__(self, item: Union[int, Tuple[int, int]]):
        """`item`: an index (at the epoch set in `epoch`), or (epoch, index) as EpochIndices gives them to loader
        workers that live for the whole run (their copy of `epoch` would stay at its first value)."""
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        rng = np.random.default_rng([self.seed, epoch, index])
        hyp = self.hyp
        if self.augment and rng.random() < hyp["mosaic"]:
            others = rng.integers(0, len(self), 3).tolist()
            order = [index] + others
            rng.shuffle(order)
            img, labels = mosaic(self.images.load, order, self.img_size, rng)
            border = -self.img_size // 2
            img, labels = random_perspective(img, labels, rng, hyp["degrees"], hyp["translate"], hyp["scale"],
                                             hyp["shear"], hyp["perspective"], border=(border, border))
        else:
            img, labels = self.images.load(index)
            shape = tuple(self.batch_shapes[index // self.batch_size]) if self.rect else self.img_size
            img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
            labels[:, [1, 3]] = labels[:, [1, 3]] * ratio[0] + pad[0]
            labels[:, [2, 4]] = labels[:, [2, 4]] * ratio[1] + pad[1]
            if self.augment:
                img, labels = random_perspective(img, labels, rng, hyp["degrees"], hyp["translate"], hyp["scale"],
                                                 hyp["shear"], hyp["perspective"])
        if self.augment:
            augment_hsv(img, rng, hyp["hsv_h"], hyp["hsv_s"], hyp["hsv_v"])
            if rng.random() < hyp["flipud"]:
                img, labels = flip_vertical(img, labels)
            if rng.random() < hyp["fliplr"]:
                img, labels = flip_horizontal(img, labels)
        return to_chw_rgb(img), torch.from_numpy(normalised_xywh(labels, img.shape[1], img.shape[0]))


class EpochIndices(Sampler):
    """`indices` (a sampler, iterated in the main process) with the dataset's current epoch beside each index, read
    when an epoch's iteration starts."""

    def __init__(self, indices: Sampler, dataset: TrainImages):
        self.indices, self.dataset = indices, dataset

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.dataset.epoch
        return ((epoch, int(i)) for i in self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class EpochShuffle(Sampler):
    """Every index once per epoch, in an order seeded by (seed, epoch): the same order whatever the loader's
    workers, and whether they live for one epoch or the whole run."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.size).tolist())

    def __len__(self) -> int:
        return self.size


def collate_train(items):
    images, labels = zip(*items)
    for i, lab in enumerate(labels):
        lab[:, 0] = i
    return torch.stack(images), torch.cat(labels, 0)


class ValImages(Dataset):
    """Validation: letterboxed into rectangular batch shapes (images ordered by aspect ratio), no
    augmentation; labels stay in original-image pixels, for metrics in that frame."""

    def __init__(self, samples: Sequence[Sample], img_size: int, batch_size: int, stride: int,
                 single_cls: bool = False):
        ar = np.array([s.height / s.width for s in samples])
        order = ar.argsort()
        self.images = SampleImages([samples[i] for i in order], img_size, augment=False, single_cls=single_cls)
        self.batch_shapes = rect_batch_shapes(ar[order], batch_size, img_size, stride, pad=0.5)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        s = self.images.samples[index]
        shape = tuple(self.batch_shapes[index // self.batch_size])
        try:
            img = self.images._read_resized(index)
        except ImageReadError as exc:  # costs this image only: nothing predicted, nothing expected
            blank = torch.full((3, *shape), 114, dtype=torch.uint8)
            return blank, torch.zeros((0, 5)), ImageMeta(index, (s.height, s.width), (1.0, 1.0), (0.0, 0.0), str(exc))
        boxed, ratio, pad = letterbox(img, shape, auto=False, scaleup=False)
        scale = img.shape[0] / s.height  # resized / original
        meta = ImageMeta(index, (s.height, s.width), (ratio[0] * scale, ratio[1] * scale), pad)
        return to_chw_rgb(boxed), torch.from_numpy(self.images.labels(index).astype(np.float32)), meta


def collate_val(items):
    images, labels, metas = zip(*items)
    return torch.stack(images), list(labels), list(metas)


def class_histogram(samples: Sequence[Sample], nc: int) -> List[int]:
    counts = np.zeros(nc, dtype=np.int64)
    for s in samples:
        np.add.at(counts, s.classes, 1)
    return counts.tolist()
