"""What the labelled images look like to the model, kept in its checkpoint for `diverse` mining.

A pool often holds near-copies of images already labelled (video frames, re-uploads): the model has learnt them,
and labelling their twins teaches little. At the end of training, the best model describes up to LOOKS_MAX of the
labelled images (training and validation, a seeded sample) exactly as `diverse` describes candidates
(ymir.mining.diverse.descriptor: its boxes' neck features per class), and the descriptors are stored in the
checkpoint's metadata, class block by class block (only the classes an image shows), as small tensors. Mining with
that model then starts its farthest-point walk as if the labelled images were already placed: a candidate close to
a labelled image gains little and sinks.

Stored under meta['labelled_looks']: {'version': 1, 'dim': FEATURE_DIM, 'img_size': int, 'iou_thres': float,
'max_det': int, 'images': int, 'image': int32 tensor (rows), 'class': int16 tensor (rows), 'vector': float16
tensor (rows, dim)}; mining uses them where it runs at the same image size, IoU threshold and max_det (tensors, as the
weights are: the checkpoint's pickle protocol writes bytes through a call that a restricted reader refuses). A
file that holds anything else there is used without it (a warning says why).
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.data.letterboxed import LetterboxedImages, collate
from utils.data.loader_workers import init_loader_worker
from utils.inference import ForwardPass, detect
from ymir.mining.diverse import FEATURE_DIM, MAX_BOXES, MIN_SCORE, descriptor
from ymir.mining.scorers import DiverseScorer

LOG = logging.getLogger(__name__)
LOOKS_MAX = 1000
LOOKS_SEED = 0
LOOKS_IOU, LOOKS_MAX_DET = 0.45, 1000  # the mining template's iou_thres and max_det
LOOKS_SECONDS = 300.0  # the describing pass stops here and keeps what it has (a slow CPU, a large model)
MAX_ROWS = LOOKS_MAX * MAX_BOXES  # class blocks a file may hold (an image's boxes name MAX_BOXES classes at most)
VERSION = 1


def sample_paths(paths: Sequence, limit: int = LOOKS_MAX, seed: int = LOOKS_SEED) -> List:
    """Up to `limit` of `paths`, a seeded sample in their own order."""
    if len(paths) <= limit:
        return list(paths)
    keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
    return [paths[i] for i in keep]


def describe_images(detector: ForwardPass, paths: Sequence, img_size: int, nc: int, anchors: int, iou_thres: float,
                    max_det: int, batch_size: int, workers: int, seconds: float = LOOKS_SECONDS) -> np.ndarray:
    """(m, nc x FEATURE_DIM) descriptors of the readable images in which the model finds a box, as mining's
    `diverse` makes them for candidates at the same iou_thres and max_det (same score threshold, NMS and
    features); after `seconds`, the images described so far."""
    scorer = DiverseScorer(anchors)
    loader = DataLoader(LetterboxedImages(list(paths), img_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=collate, worker_init_fn=init_loader_worker)
    looks, started = [], time.monotonic()
    for images, metas in loader:
        with torch.inference_mode():  # NMS at the scorer's MIN_SCORE, once
            out = detect(detector, images, metas, MIN_SCORE, iou_thres, max_det)
            _, evidence = scorer.score_and_describe(images, out, metas, [str(m.index) for m in metas])
        looks += [descriptor(e.rows, nc) for e in evidence if e is not None and len(e.rows)]
        if time.monotonic() - started > seconds:
            LOG.warning("describing the labelled images took over %.0f s: %d described are kept", seconds,
                        len(looks))
            break
    return np.stack(looks) if looks else np.zeros((0, nc * FEATURE_DIM), np.float32)


def pack(looks: np.ndarray, nc: int, img_size: int, iou_thres: float = LOOKS_IOU,
         max_det: int = LOOKS_MAX_DET) -> Dict[str, object]:
    """The checkpoint's form of `looks`: the non-zero class blocks of each image, and what they were made with."""
    blocks = looks.reshape(len(looks), nc, FEATURE_DIM)
    image, cls = np.nonzero(np.abs(blocks).sum(axis=2) > 0)
    return {"version": VERSION, "dim": FEATURE_DIM, "img_size": int(img_size), "iou_thres": float(iou_thres),
            "max_det": int(max_det), "images": int(len(looks)),
            "image": torch.from_numpy(image.astype(np.int32)), "class": torch.from_numpy(cls.astype(np.int16)),
            "vector": torch.from_numpy(blocks[image, cls].astype(np.float16))}


def unpack(value: object, nc: int, img_size: int, iou_thres: float = LOOKS_IOU,
           max_det: int = LOOKS_MAX_DET) -> Optional[np.ndarray]:
    """The (m, nc x FEATURE_DIM) unit descriptors a checkpoint's `labelled_looks` holds, or None: where it holds
    none, where they were made otherwise than mining runs (another image size, IoU threshold or max_det: the
    features or the boxes differ), and (with a warning) where it holds something that is not such a record."""
    if value is None:
        return None
    try:
        problem = _problem(value, nc)
    except Exception as exc:  # a crafted record costs the walk its head start, never the task
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        LOG.warning("the model's labelled_looks are not used: %s", problem)
        return None
    made = (value["img_size"], value["iou_thres"], value["max_det"])
    if made != (img_size, iou_thres, max_det):
        LOG.info("the model's labelled looks were made at %d px, iou_thres %g, max_det %d, and mining runs at %d px, "
                 "%g, %d: not used", *made, img_size, iou_thres, max_det)
        return None
    looks = np.zeros((value["images"], nc, FEATURE_DIM), dtype=np.float32)
    looks[value["image"].numpy(), value["class"].numpy().astype(np.int64)] = value["vector"].numpy()
    looks = looks.reshape(value["images"], nc * FEATURE_DIM)
    looks = looks[np.abs(looks).sum(axis=1) > 0]
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    return looks if len(looks) else None


def _problem(value: object, nc: int) -> str:
    """Why `value` is not a record `pack` wrote for a model of `nc` classes ('' when it is one)."""
    if type(value) is not dict or type(value.get("version")) is not int or value["version"] != VERSION or \
            type(value.get("dim")) is not int or value["dim"] != FEATURE_DIM:
        return f"not a version {VERSION} record of {FEATURE_DIM}-value features"
    images, size, iou, max_det = (value.get(k) for k in ("images", "img_size", "iou_thres", "max_det"))
    if not (type(images) is int and type(size) is int and type(max_det) is int and type(iou) is float) or \
            not (0 <= images <= LOOKS_MAX and 32 <= size <= 8192 and 0.0 < iou <= 1.0 and max_det >= 1):
        return "its image count, size, IoU threshold or max_det is out of bounds"
    arrays = [value.get(k) for k in ("image", "class", "vector")]
    if not all(type(a) is torch.Tensor and a.device.type == "cpu" and not a.requires_grad for a in arrays) or \
            [a.dtype for a in arrays] != [torch.int32, torch.int16, torch.float16] or \
            [a.dim() for a in arrays] != [1, 1, 2]:
        return "its arrays are not int32, int16 and float16 tensors of 1, 1 and 2 dimensions"
    image, cls, vectors = arrays
    rows = image.shape[0]
    if cls.shape != (rows,) or vectors.shape != (rows, FEATURE_DIM) or rows > MAX_ROWS:
        return "its arrays do not agree in shape"
    if rows and (int(image.min()) < 0 or int(image.max()) >= images or int(cls.min()) < 0 or int(cls.max()) >= nc):
        return f"it names images or classes outside {images} images and {nc} classes"
    if not bool(torch.isfinite(vectors).all()):
        return "its features are not finite"
    return ""
