"""CPU inference through onnxruntime: the fused model, exported once per task in memory, fed uint8 batches.

On a CPU onnxruntime runs YOLOv5 faster than torch's eager mode (bench/RESULTS.md). The graph takes the
letterboxed uint8 batch (any batch size, the task's square input size), normalises it, and returns what the
torch `Detector` returns: the decoded rows and the raw per-level maps, so NMS and the mining scorers cannot tell
the two apart. The session is checked against the torch model on a sample batch before it is used.
"""
from __future__ import annotations

import copy
import io
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.export import check_session, max_onnx_opset, trace_to_onnx
from utils.neck_features import NeckFeatures

OPSET = 17  # or the newest the installed torch writes, if older
# Fusing SiLU (x * sigmoid(x)) into one QuickGelu node keeps the convolutions from staying in onnxruntime's
# blocked (NCHWc) layout: every conv would convert its output back and forth. Without that fusion the graph
# runs 6-7 % faster on x86 (bench/RESULTS.md).
DISABLED_OPTIMIZERS = ["QuickGeluFusion"]


class _NormalisingModel(nn.Module):
    """uint8 (B, 3, S, S) -> (decoded, level 0, level 1, ... [, neck map 0, neck map 1, ...]), as the torch
    Detector computes them."""

    def __init__(self, model: DetectionModel, features: bool = False):
        super().__init__()
        self.model = model
        self.neck = NeckFeatures(model) if features else None

    def forward(self, images: torch.Tensor):
        decoded, levels = self.model(images.float() / 255)
        return (decoded, *levels, *(self.neck.take() if self.neck is not None else ()))


class OnnxDetector:
    """Call it with a uint8 (B, 3, S, S) CPU batch; returns (decoded (B, N, 5 + nc), raw per-level maps) and, made
    with `features`, the neck's maps third."""

    def __init__(self, model: DetectionModel, img_size: int, threads: int, features: bool = False):
        import onnxruntime

        model = copy.deepcopy(model).float().cpu().eval().fuse()
        model.detect.export = False
        self.names = dict(model.names)
        self.levels = model.detect.nl
        self.features = features
        wrapped = _NormalisingModel(model, features).eval()
        sample = torch.randint(0, 256, (2, 3, img_size, img_size), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(0))
        outputs = ["decoded"] + [f"level{i}" for i in range(model.detect.nl)]
        outputs += [f"neck{i}" for i in range(model.detect.nl)] if features else []
        buffer = io.BytesIO()
        trace_to_onnx(wrapped, sample, buffer, min(OPSET, max_onnx_opset()), outputs, dynamic_batch=True)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"],
                                                    disabled_optimizers=DISABLED_OPTIMIZERS)
        check_session(self.session, wrapped, sample)  # decoded rows within 1e-3 px, raw maps within 1e-3

    def __call__(self, images_uint8: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outputs = [torch.from_numpy(o) for o in self.session.run(None, {"images": np.ascontiguousarray(
            images_uint8.numpy())})]
        levels = outputs[1:1 + self.levels]
        return (outputs[0], levels, outputs[1 + self.levels:]) if self.features else (outputs[0], levels)
