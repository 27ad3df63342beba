"""One validation pass: NMS at YOLOv5's validation settings, metrics in original-image pixels."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from utils.boxes import unletterbox_boxes
from utils.metrics import DetectionMetrics, MetricAccumulator
from utils.nms import non_max_suppression

VAL_CONF = 0.001
VAL_IOU = 0.6
VAL_MAX_DET = 300


@torch.no_grad()
def validate(model: torch.nn.Module, loader, device: torch.device, nc: int, half: bool = False,
             progress: Optional[Callable[[float], None]] = None, keep_predictions: int = 0):
    """Returns (metrics, the first `keep_predictions` (image, detections, ground truth) for pictures: both in the
    letterboxed image's pixels, ground truth as (class, x1, y1, x2, y2) rows)."""
    model.eval()
    accumulator = MetricAccumulator(nc)
    examples = []
    total = len(loader)
    for step, (images, labels, metas) in enumerate(loader):
        x = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        x = (x.half() if half else x.float()) / 255
        decoded, _ = model(x)
        detections = non_max_suppression(decoded.float(), VAL_CONF, VAL_IOU, multi_label=True, max_det=VAL_MAX_DET)
        for det, lab, meta, image in zip(detections, labels, metas, images):
            if meta.error is not None:
                continue
            det = det.cpu()
            if len(examples) < keep_predictions:  # in the letterboxed image's pixels, as drawn
                truth = lab.clone()
                truth[:, [1, 3]] = truth[:, [1, 3]] * meta.ratio[0] + meta.pad[0]
                truth[:, [2, 4]] = truth[:, [2, 4]] * meta.ratio[1] + meta.pad[1]
                examples.append((image, det.clone(), truth))
            det[:, :4] = unletterbox_boxes(det[:, :4], meta.ratio, meta.pad, meta.shape)
            accumulator.add(det, lab)
        if progress:
            progress((step + 1) / total)
    return accumulator.compute(), accumulator.confusion, examples


def summary_line(m: DetectionMetrics) -> str:
    return (f"P {m.precision:.3f}  R {m.recall:.3f}  mAP@0.5 {m.map50:.4f}  mAP@0.5:0.95 {m.map50_95:.4f}  "
            f"tp {m.tp} fp {m.fp} fn {m.fn}")
