"""Batched inference: images read and letterboxed in loader workers, moved as uint8, normalised on the device."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np
import torch

from models.yolo import DetectionModel
from utils.boxes import unletterbox_boxes
from utils.data.letterboxed import ImageMeta
from utils.neck_features import NeckFeatures
from utils.nms import Suppressed, suppress
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
    """One forward pass and its NMS: detections in letterboxed-input pixels, with their raw row indices. NMS ran
    once, at `floor` (at most the detections' threshold); `above` gives what it keeps at any higher threshold."""

    decoded: torch.Tensor  # (B, N, 5 + nc), on the CPU
    on_device: torch.Tensor  # the same, where the forward pass left it (NMS reruns there, sorting as it sorted)
    levels: List[torch.Tensor]  # raw per-level maps, on the device
    features: Optional[List[torch.Tensor]]  # the neck's maps, from a detector made with `features`
    floor: float  # the score threshold NMS ran at, with this IoU threshold and max_det:
    nms: Tuple[float, int]
    at_floor: Suppressed  # what it kept, on the CPU (an unreadable image: nothing, and no tie)
    conf_thres: float  # the detections' threshold
    detections: List[torch.Tensor] = field(init=False)  # per image (n, 6): x1, y1, x2, y2, score, class
    indices: List[torch.Tensor] = field(init=False)  # per image (n,): rows of `decoded`

    def __post_init__(self):
        self.detections, self.indices = self.above(self.conf_thres)

    def above(self, conf_thres: float) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(detections, indices) exactly as NMS at conf_thres with the same IoU threshold and max_det keeps them,
        for conf_thres >= floor. Greedy NMS decides each box by better-scored boxes alone, so of the boxes it keeps
        at the floor, those scoring over conf_thres are the ones it keeps at conf_thres, in the same order (and the
        first max_det at the floor hold the first max_det over conf_thres). That holds where no two candidates over
        conf_thres score the same: NMS orders tied candidates as its sort happens to (as the original's does), so
        an image with ties there is given its own NMS at conf_thres."""
        if conf_thres < self.floor or (conf_thres > self.floor and self.at_floor.highest_tie is None):
            raise ValueError(f"NMS ran at {self.floor}: the boxes kept at {conf_thres} cannot be derived from it")
        dets, indices = list(self.at_floor.detections), list(self.at_floor.indices)
        if conf_thres == self.floor:
            return dets, indices
        for b in range(len(dets)):
            if len(dets[b]) and self.at_floor.highest_tie[b] > conf_thres:
                own = suppress(self.on_device[b:b + 1], conf_thres, iou_thres=self.nms[0], max_det=self.nms[1])
                dets[b], indices[b] = own.detections[0].cpu(), own.indices[0].cpu()
            else:
                keep = dets[b][:, 4] > conf_thres
                dets[b], indices[b] = dets[b][keep], indices[b][keep]
        return dets, indices


def detect(detector: ForwardPass, images_uint8: torch.Tensor, metas: List[ImageMeta], conf_thres: float,
           iou_thres: float, max_det: int, floor: Optional[float] = None) -> BatchOutput:
    """The forward pass and NMS; with `floor` (a lower threshold a mining scorer reads boxes at), NMS runs once,
    at the lower of the two, and the detections at conf_thres are derived from it (BatchOutput.above)."""
    decoded, levels, *features = detector(images_uint8)
    low = conf_thres if floor is None else min(floor, conf_thres)
    kept = suppress(decoded, low, iou_thres, max_det=max_det, report_ties=floor is not None)  # for above()
    for i, meta in enumerate(metas):
        if meta.error is not None:  # a blank stand-in for an unreadable file predicts nothing
            kept.detections[i], kept.indices[i] = kept.detections[i][:0], kept.indices[i][:0]
            if kept.highest_tie is not None:
                kept.highest_tie[i] = -float("inf")
    kept.detections = [d.float().cpu() for d in kept.detections]
    kept.indices = [i.cpu() for i in kept.indices]
    return BatchOutput(decoded.float().cpu(), decoded, levels, features[0] if features else None, low,
                       (iou_thres, max_det), kept, conf_thres)


def in_original_pixels(detections: torch.Tensor, meta: ImageMeta) -> np.ndarray:
    """(n, 6) detections with boxes mapped from the letterboxed input back to the original image."""
    det = detections.clone()
    det[:, :4] = unletterbox_boxes(det[:, :4], meta.ratio, meta.pad, meta.shape)
    return det.numpy()
