"""The architecture: exact YOLOv5 parameter counts, state_dict keys and shapes equal to the original's."""
import pytest
import torch
import torch.nn as nn

from models.common import Conv
from models.yolo import DetectionModel
from tests.helpers import oracle

PARAMS_AT_80 = {
    "yolov5n": 1_872_157, "yolov5s": 7_235_389, "yolov5m": 21_190_557, "yolov5l": 46_563_709,
    "yolov5x": 86_749_405, "yolov5n6": 3_246_940, "yolov5s6": 12_626_620, "yolov5m6": 35_731_932,
    "yolov5l6": 76_770_172, "yolov5x6": 140_794_780,
}


@pytest.fixture(scope="module")
def original_models():
    return oracle("keys", ",".join(sorted(PARAMS_AT_80)), "80,3")


@pytest.mark.parametrize("name", sorted(PARAMS_AT_80))
def test_parameter_counts_and_keys_equal_the_original(name, original_models):
    for nc in (80, 3):
        model = DetectionModel(name, nc=nc)
        ours = {k: list(v.shape) for k, v in model.state_dict().items()}
        original = original_models[f"{name}@{nc}"]
        assert list(ours) == list(original["keys"])  # same names in the same order
        assert ours == original["keys"]
        assert sum(p.numel() for p in model.parameters()) == original["params"]
        if nc == 80:
            assert original["params"] == PARAMS_AT_80[name]


def test_strides_and_anchors_in_grid_units():
    model = DetectionModel("yolov5s6", nc=2)
    assert model.stride.tolist() == [8, 16, 32, 64]
    assert torch.allclose(model.detect.anchors[0] * 8, torch.tensor([[19.0, 27], [44, 40], [38, 94]]))
    assert torch.allclose(model.detect.anchors[3] * 64, torch.tensor([[436.0, 615], [739, 380], [925, 792]]))


def test_activation_is_a_build_option():
    relu = DetectionModel("yolov5n", nc=2, activation="relu")
    acts = {type(m.act) for m in relu.modules() if isinstance(m, Conv)}
    assert acts == {nn.ReLU} and relu.activation == "ReLU"
    default = DetectionModel("yolov5n", nc=2)
    assert {type(m.act) for m in default.modules() if isinstance(m, Conv)} == {nn.SiLU}


def test_output_shapes_train_and_eval():
    model = DetectionModel("yolov5n", nc=4)
    x = torch.rand(2, 3, 128, 160)
    levels = model.train()(x)
    assert [tuple(t.shape) for t in levels] == [(2, 3, 16, 20, 9), (2, 3, 8, 10, 9), (2, 3, 4, 5, 9)]
    decoded, _ = model.eval()(x)
    assert decoded.shape == (2, 3 * (16 * 20 + 8 * 10 + 4 * 5), 9)


def test_fused_model_gives_the_same_outputs():
    torch.manual_seed(0)
    model = DetectionModel("yolov5n", nc=3)
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        before, _ = model(x)
        after, _ = model.fuse()(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # decoded boxes reach ~370 px, where one float32 step is 3e-5: kernels may differ by a few steps
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-4)
