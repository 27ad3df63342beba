"""Loss and metrics equal the original YOLOv5's on the same inputs; metric math on known values."""
import math

import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from tests.helpers import load_plain, oracle
from utils.hyperparameters import SCRATCH_LOW
from utils.loss import YoloLoss
from utils.metrics import MetricAccumulator, ap_per_class, average_precision, match_predictions


def random_targets(g, n, images, nc):
    return torch.cat([torch.randint(0, images, (n, 1), generator=g).float(),
                      torch.randint(0, nc, (n, 1), generator=g).float(),
                      torch.rand(n, 2, generator=g) * 0.9 + 0.05, torch.rand(n, 2, generator=g) * 0.5 + 0.02], 1)


@pytest.mark.parametrize("cfg,nc,hyp_changes", [
    ("yolov5n", 3, {}),
    ("yolov5s", 1, {"label_smoothing": 0.1}),
    ("yolov5n6", 4, {"fl_gamma": 1.5, "anchor_t": 3.0}),
    ("yolov5n", 2, {"no_targets": True}),
])
def test_loss_equals_the_original(tmp_path, cfg, nc, hyp_changes):
    hyp = dict(SCRATCH_LOW, **{k: v for k, v in hyp_changes.items() if k != "no_targets"})
    model = DetectionModel(cfg, nc=nc)
    g = torch.Generator().manual_seed(nc)
    size = 160
    preds = [torch.randn(2, model.detect.na, size // int(s), size // int(s), 5 + nc, generator=g) for s in model.stride]
    targets = random_targets(g, 0 if hyp_changes.get("no_targets") else 12, 2, nc)
    io = tmp_path / "io.pt"
    torch.save({"preds": preds, "targets": targets, "hyp": hyp}, io)
    oracle("loss", io, cfg, nc)
    expected = load_plain(io)
    total, items = YoloLoss(model.detect, hyp)([p.clone() for p in preds], targets.clone())
    assert total.item() == pytest.approx(expected["loss"].item(), rel=1e-5)
    torch.testing.assert_close(items, expected["items"], rtol=1e-5, atol=1e-7)


def test_loss_gradients_flow_to_all_outputs():
    model = DetectionModel("yolov5n", nc=2)
    g = torch.Generator().manual_seed(0)
    preds = [torch.randn(1, 3, 128 // int(s), 128 // int(s), 7, generator=g).requires_grad_() for s in model.stride]
    total, _ = YoloLoss(model.detect, SCRATCH_LOW)(preds, random_targets(g, 5, 1, 2))
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in preds)


def synthetic_validation(seed, images=12, nc=3):
    g = torch.Generator().manual_seed(seed)
    dets, labels = [], []
    for _ in range(images):
        m = int(torch.randint(0, 5, (1,), generator=g))
        xy = torch.rand(m, 2, generator=g) * 200
        wh = torch.rand(m, 2, generator=g) * 60 + 10
        lab = torch.cat([torch.randint(0, nc, (m, 1), generator=g).float(), xy, xy + wh], 1)
        # detections: jittered copies of labels (some with the wrong class) plus false positives
        jitter = torch.randn(m, 4, generator=g) * 6
        cls = torch.where(torch.rand(m, generator=g) < 0.8, lab[:, 0], (lab[:, 0] + 1) % nc)
        hits = torch.cat([lab[:, 1:] + jitter, torch.rand(m, 1, generator=g), cls[:, None]], 1)
        k = int(torch.randint(0, 3, (1,), generator=g))
        fxy = torch.rand(k, 2, generator=g) * 200
        false = torch.cat([fxy, fxy + 30, torch.rand(k, 1, generator=g), torch.randint(0, nc, (k, 1),
                                                                                      generator=g).float()], 1)
        det = torch.cat([hits, false])
        dets.append(det[det[:, 4].argsort(descending=True)])
        labels.append(lab)
    return dets, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_the_original(tmp_path, seed):
    dets, labels = synthetic_validation(seed)
    io = tmp_path / "io.pt"
    torch.save({"detections": dets, "labels": labels}, io)
    expected_summary = oracle("metrics", io)
    expected = load_plain(io)
    acc = MetricAccumulator(3)
    for det, lab, correct in zip(dets, labels, expected["correct"]):
        assert torch.equal(match_predictions(det, lab), correct)
        acc.add(det, lab)
    result = acc.compute()
    assert result.map50 == pytest.approx(expected_summary["map50"], abs=1e-6)
    assert result.map50_95 == pytest.approx(expected_summary["map"], abs=1e-6)
    theirs = expected["ap_per_class"]
    for key in ("p", "r", "f1", "ap", "tp", "fp"):
        np.testing.assert_allclose(getattr(result.per_class, key), theirs[key].numpy(), atol=1e-6)


def test_average_precision_known_values():
    # YOLOv5's envelope ends at precision 0 at recall 1, so a perfect detector scores 0.995, not 1
    assert average_precision(np.array([1.0]), np.array([1.0])) == pytest.approx(0.995)
    # half the labels found at precision 1: 0.5 under the plateau plus the envelope's linear fall to (1, 0)
    assert average_precision(np.array([0.5]), np.array([1.0])) == pytest.approx(0.75, abs=1e-9)
    perfect = ap_per_class(np.ones((3, 10), bool), np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(3))
    assert perfect.ap[0, 0] == pytest.approx(0.995) and perfect.tp[0] == 3 and perfect.fp[0] == 0


def test_confusion_matrix_counts():
    acc = MetricAccumulator(2)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=torch.float32)
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 0], [50, 50, 60, 60, 0.9, 1]])
    acc.add(dets, labels)
    m = acc.confusion.matrix
    assert m[0, 0] == 1 and m[0, 1] == 1 and m[1, 2] == 1 and m.sum() == 3



def reference_ciou(a, b):
    """CIoU of two xywh boxes, written out from its definition (Zheng et al. 2020), in float64."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = (map(float, a), map(float, b))
    ix = max(0.0, min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2))
    iy = max(0.0, min(y1 + h1 / 2, y2 + h2 / 2) - max(y1 - h1 / 2, y2 - h2 / 2))
    iou = ix * iy / (w1 * h1 + w2 * h2 - ix * iy)
    cw = max(x1 + w1 / 2, x2 + w2 / 2) - min(x1 - w1 / 2, x2 - w2 / 2)
    ch = max(y1 + h1 / 2, y2 + h2 / 2) - min(y1 - h1 / 2, y2 - h2 / 2)
    v = 4 / math.pi ** 2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    return iou - ((x2 - x1) ** 2 + (y2 - y1) ** 2) / (cw ** 2 + ch ** 2) - v * v / (v - iou + 1)


def test_ciou_of_a_box_whose_size_underflowed_has_a_finite_gradient():
    """wh logits near -50 give a predicted box whose size (the sigmoid, squared) underflows float32: its aspect
    term divided by 0 (an infinite or NaN gradient, or a NaN value), which ended a training on an easy dataset. A
    box of a real size gets CIoU's own value."""
    from utils.boxes import ciou

    logits = torch.tensor([[-50.0, -50.0], [-60.0, -60.0], [0.3, -0.2]], requires_grad=True)
    wh = (logits.sigmoid() * 2) ** 2 * torch.tensor([[10.0, 13.0]])
    pred = torch.cat([torch.full((3, 2), 5.0), wh], 1)
    target = torch.tensor([[5.0, 5.0, 4.0, 6.0], [5.0, 5.0, 4.0, 6.0], [5.5, 4.5, 12.0, 9.0]])
    value = ciou(pred, target)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(logits.grad).all()
    assert float(value[2].detach()) == pytest.approx(reference_ciou(pred[2].detach(), target[2]), abs=1e-5)
