"""Batched inference: images read and letterboxed in loader workers, moved as uint8, normalised on the device."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np
import torch

from models.yolo import DetectionModel
from utils.boxes import unletterbox_boxes
from utils.data.letterboxed import ImageMeta
from utils.neck_features import NeckFeatures
from utils.nms import non_max_suppression
from utils.onnx_detector import OnnxDetector

LOG = logging.getLogger(__name__)


class Detector:
    """A fused model in eval mode on one device; call it with a uint8 batch.

    Weights and activations are kept channels-last (NHWC): oneDNN on CPU and cuDNN on GPU run these
    convolutions 1.1-1.5x faster than in NCHW, with the same results up to float rounding.
    """

    def __init__(self, model: DetectionModel, device: torch.device, half: bool = False, features: bool = False):
        self.device, self.half = device, half
        self.model = model.fuse().eval().to(device).to(memory_format=torch.channels_last)
        if half:  # fp16 weights and activations (CUDA only); outputs come back as float32
            self.model.half()
        self.names = dict(model.names)
        self.neck = NeckFeatures(self.model) if features else None

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor):
        """Returns (decoded (B, N, 5 + nc), raw per-level maps), in float32; with `features`, also the neck's
        maps (utils.neck_features)."""
        x = images_uint8.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = x.half() if self.half else x.float()
        decoded, levels = self.model(x.div_(255))
        if self.half:
            decoded, levels = decoded.float(), [level.float() for level in levels]
        if self.neck is None:
            return decoded, levels
        return decoded, levels, [m.float() for m in self.neck.take()]


class ForwardPass(Protocol):
    """What `detect` needs of a detector: the torch `Detector` or `utils.onnx_detector.OnnxDetector`. Made with
    `features`, either also returns the neck's maps, third."""

    names: Dict[int, str]

    def __call__(self, images_uint8: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        ...


def make_detector(model: DetectionModel, device: torch.device, img_size: int, features: bool = False) -> ForwardPass:
    """The fastest way this machine runs the model: onnxruntime on a CPU, torch on a GPU (or where the ONNX
    session cannot be built, which is logged)."""
    if device.type == "cpu":
        try:
            started = time.perf_counter()
            detector = OnnxDetector(model, img_size, torch.get_num_threads(), features)
            LOG.info("model exported to onnxruntime for CPU inference in %.1f s", time.perf_counter() - started)
            return detector
        except Exception as exc:  # an exporter or runtime limitation must not cost the task: torch can run it
            LOG.warning("onnxruntime unavailable for this model (%s: %s); inference runs in torch",
                        type(exc).__name__, exc)
    return Detector(model, device, features=features)


@dataclass
class BatchOutput:
    """One forward pass and its NMS: detections in letterboxed-input pixels, with their raw row indices."""

    decoded: torch.Tensor  # (B, N, 5 + nc), on the CPU
    levels: List[torch.Tensor]  # raw per-level maps, on the device
    detections: List[torch.Tensor]  # per image (n, 6): x1, y1, x2, y2, score, class
    indices: List[torch.Tensor]  # per image (n,): rows of `decoded`
    features: Optional[List[torch.Tensor]] = None  # the neck's maps, from a detector made with `features`


def detect(detector: ForwardPass, images_uint8: torch.Tensor, metas: List[ImageMeta], conf_thres: float,
           iou_thres: float, max_det: int) -> BatchOutput:
    decoded, levels, *features = detector(images_uint8)
    dets, indices = non_max_suppression(decoded, conf_thres, iou_thres, max_det=max_det, return_indices=True)
    for i, meta in enumerate(metas):
        if meta.error is not None:  # a blank stand-in for an unreadable file predicts nothing
            dets[i], indices[i] = dets[i][:0], indices[i][:0]
    return BatchOutput(decoded.float().cpu(), levels, [d.float().cpu() for d in dets], [i.cpu() for i in indices],
                       features[0] if features else None)


def in_original_pixels(detections: torch.Tensor, meta: ImageMeta) -> np.ndarray:
    """(n, 6) detections with boxes mapped from the letterboxed input back to the original image."""
    det = detections.clone()
    det[:, :4] = unletterbox_boxes(det[:, :4], meta.ratio, meta.pad, meta.shape)
    return det.numpy()
