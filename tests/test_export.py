"""ONNX export: the file runs in onnxruntime and gives the torch model's outputs."""
import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn as nn

from models.yolo import DetectionModel
from utils.export import export_onnx, max_onnx_opset


@pytest.mark.parametrize("cfg,size,opset,dynamic", [("yolov5n", 160, 11, False), ("yolov5n6", 192, "max", True)])
def test_onnx_equals_torch(tmp_path, cfg, size, opset, dynamic):
    """Opset 11 (the template's) and the newest this torch writes (14 on torch 1.10, 20 on current torch)."""
    opset = max_onnx_opset() if opset == "max" else opset
    assert max_onnx_opset() >= 14
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = export_onnx(model, tmp_path / "m.onnx", size, opset, dynamic_batch=dynamic)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = 2 if dynamic else 1
    x = torch.rand(batch, 3, size, size)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        expected, _ = model.eval()(x)
    assert got.shape == tuple(expected.shape)
    # scores within 1e-4; pixel coordinates (up to ~1000 for untrained P6 anchors) within 1e-4 relative, as float32
    # itself cannot resolve 1e-4 absolute near 1000
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[..., 4:], expected.numpy()[..., 4:], rtol=0, atol=1e-4)
    assert [i.name for i in session.get_inputs()] == ["images"]
