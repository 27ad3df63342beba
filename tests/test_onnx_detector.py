"""CPU inference through onnxruntime gives what the torch detector gives, for any batch size."""
import copy
import io
import logging

import onnx
import pytest
import torch

from models.yolo import DetectionModel
from utils import onnx_detector
from utils.export import trace_to_onnx
from utils.inference import Detector, make_detector
from utils.onnx_detector import OnnxDetector, _NormalisingModel

SIZE = 96


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DetectionModel("yolov5n", nc=3).eval()


def images(batch, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def test_onnx_detector_equals_the_torch_detector(model):
    ours, reference = OnnxDetector(model, SIZE, threads=2), Detector(model, torch.device("cpu"))
    assert ours.names == reference.names
    for batch in (1, 3):
        x = images(batch, batch)
        decoded, levels = ours(x)
        expected_decoded, expected_levels = reference(x)
        assert decoded.shape == expected_decoded.shape == (batch, 3 * (12 ** 2 + 6 ** 2 + 3 ** 2), 8)
        assert (decoded - expected_decoded).abs().max().item() < 1e-3  # pixels
        assert [lv.shape for lv in levels] == [lv.shape for lv in expected_levels]
        assert max((a - b).abs().max().item() for a, b in zip(levels, expected_levels)) < 1e-4


def test_both_detectors_return_the_same_neck_features_when_asked(model):
    ours, reference = OnnxDetector(model, SIZE, 2, features=True), Detector(model, torch.device("cpu"), features=True)
    x = images(2, 5)
    (decoded, levels, neck), (expected_decoded, _, expected_neck) = ours(x), reference(x)
    assert (decoded - expected_decoded).abs().max().item() < 1e-3 and len(levels) == 3
    assert [m.shape[0:1] + m.shape[2:] for m in neck] == [(2, 12, 12), (2, 6, 6), (2, 3, 3)]  # strides 8, 16, 32
    assert [m.shape[1] for m in neck] == [layer.in_channels for layer in model.detect.m]
    assert max((a - b).abs().max().item() for a, b in zip(neck, expected_neck)) < 1e-3
    assert len(OnnxDetector(model, SIZE, 2)(x)) == 2  # not asked: the usual pair


def test_an_image_gets_the_same_output_alone_or_in_any_batch(model):
    """Sharding changes which images share a batch; the results must not change with it."""
    ours = OnnxDetector(model, SIZE, threads=2)
    x = images(5, 7)
    together, _ = ours(x)
    for i in range(5):
        alone, _ = ours(x[i:i + 1])
        assert torch.equal(alone[0], together[i])


def test_make_detector_uses_onnxruntime_on_cpu_and_falls_back_to_torch(model, monkeypatch, caplog):
    assert isinstance(make_detector(model, torch.device("cpu"), SIZE), OnnxDetector)

    def broken(*args, **kwargs):
        raise RuntimeError("exporter says no")
    monkeypatch.setattr(onnx_detector.OnnxDetector, "__init__", broken)
    with caplog.at_level(logging.WARNING):
        detector = make_detector(model, torch.device("cpu"), SIZE)
    assert isinstance(detector, Detector)
    assert "exporter says no" in caplog.text and "inference runs in torch" in caplog.text


def test_the_exported_graph_holds_the_cell_grids_as_constants(model):
    """The head's grids depend only on the export size: no per-run arithmetic on the input's shape for them."""
    wrapped = _NormalisingModel(copy.deepcopy(model).fuse()).eval()
    buffer = io.BytesIO()
    trace_to_onnx(wrapped, images(2, 0), buffer, 13, ["decoded", "level0", "level1", "level2"], dynamic_batch=True)
    ops = {node.op_type for node in onnx.load_from_string(buffer.getvalue()).graph.node}
    assert "Conv" in ops
    assert not ops & {"Range", "Where", "Expand", "ConstantOfShape"}
