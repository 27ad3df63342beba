"""ONNX export at the trained image size, verified by running it in onnxruntime against the torch model."""
from __future__ import annotations

import copy
import inspect
import io
import logging
import warnings
from pathlib import Path
from typing import List

import numpy as np
import torch

from models.yolo import DetectionModel

LOG = logging.getLogger(__name__)
# ONNX against torch: decoded outputs are pixels, up to a few thousand for P6 boxes, where one float32 step is
# 2.4e-4 and the two runtimes' kernels round differently on each instruction set; a wrong grid or anchor is off by
# whole pixels. So 1e-3 plus 1e-5 of the value.
TOLERANCE = 1e-3
RELATIVE_TOLERANCE = 1e-5


class ExportError(Exception):
    pass


def max_onnx_opset() -> int:
    """The newest opset this torch's TorchScript exporter writes (14 on torch 1.10, 20 on current torch)."""
    try:
        from torch.onnx import _constants

        return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):
        from torch.onnx import symbolic_helper

        return max(symbolic_helper._onnx_main_opset, *symbolic_helper._onnx_stable_opsets)


def trace_to_onnx(module: torch.nn.Module, sample: torch.Tensor, target, opset: int, output_names: List[str],
                  dynamic_batch: bool) -> None:
    """torch.onnx.export of `module` (input `images`) with the TorchScript exporter, to a path or a buffer."""
    kwargs = dict(opset_version=opset, input_names=["images"], output_names=output_names, do_constant_folding=True)
    if dynamic_batch:
        kwargs["dynamic_axes"] = {name: {0: "batch"} for name in ["images"] + output_names}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: stable graphs for every opset we allow
    with torch.no_grad(), warnings.catch_warnings():
        # One eager pass first (one image is enough): the head builds its cell grids for the export size, so the
        # trace holds them as constants instead of recomputing them from the input's shape on every run.
        module(sample[:1])
        # torch >= 2.9 calls the TorchScript exporter legacy; it is the one every supported torch shares
        warnings.simplefilter("ignore", DeprecationWarning)
        # the head's grid-size check is traced as a constant: right, as the export size is fixed
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, (sample,), target if isinstance(target, io.BytesIO) else str(target), **kwargs)


def export_onnx(model: DetectionModel, path: Path, img_size: int, opset: int, dynamic_batch: bool = False) -> Path:
    """Write `path` (input `images` 1x3xSxS float 0-1, output `output0` decoded rows) and check it."""
    model = copy.deepcopy(model).float().cpu().eval().fuse()
    model.detect.export = True
    dummy = torch.rand(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    try:
        trace_to_onnx(model, dummy, path, opset, ["output0"], dynamic_batch)
        verify_onnx(model, path, dummy)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    return path


def check_session(session, module: torch.nn.Module, sample: torch.Tensor) -> float:
    """Run `sample` through the onnxruntime session and the torch module; every output must have the same shape
    and agree within TOLERANCE + RELATIVE_TOLERANCE x |torch's value|. Returns the largest absolute difference;
    raises ExportError otherwise."""
    got = session.run(None, {"images": sample.numpy()})
    with torch.no_grad():
        expected = module(sample)
    expected = [e.numpy() for e in (expected if isinstance(expected, (tuple, list)) else (expected,))]
    shapes, expected_shapes = [g.shape for g in got], [e.shape for e in expected]
    if shapes != expected_shapes:
        raise ExportError(f"ONNX output differs from torch: shape {shapes} vs {expected_shapes}")
    differences = [np.abs(g - e) for g, e in zip(got, expected)]
    diff = max(float(d.max()) for d in differences)
    if not all(np.all(d <= TOLERANCE + RELATIVE_TOLERANCE * np.abs(e)) for d, e in zip(differences, expected)):
        raise ExportError(f"ONNX output differs from torch: max difference {diff}")
    return diff


def verify_onnx(model: DetectionModel, path: Path, sample: torch.Tensor) -> float:
    import onnx
    import onnxruntime

    onnx.checker.check_model(onnx.load(str(path)))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = check_session(session, model, sample)
    LOG.info("ONNX export verified in onnxruntime (max difference from torch %.2e)", diff)
    return diff
