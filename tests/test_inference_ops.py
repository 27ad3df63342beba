"""Letterbox, box mapping and NMS against the original YOLOv5's on the same inputs."""
import numpy as np
import pytest
import torch

import utils.nms
from tests.helpers import load_plain, oracle
from utils.boxes import box_iou, unletterbox_boxes, xywh_to_xyxy, xyxy_to_xywh
from utils.data.letterbox import letterbox
from utils.nms import greedy_nms, non_max_suppression


def random_predictions(seed, batch=3, anchors=2000, nc=4):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, anchors, 2, generator=g) * 320
    wh = torch.rand(batch, anchors, 2, generator=g) * 80 + 2
    scores = torch.rand(batch, anchors, 1 + nc, generator=g) ** 3  # mostly low, like real outputs
    return torch.cat((xy, wh, scores), 2)


@pytest.mark.parametrize("kernel", ["torchvision", "greedy_nms"])
@pytest.mark.parametrize("multi_label,agnostic,conf,iou,max_det", [
    (False, False, 0.25, 0.45, 1000),
    (True, False, 0.001, 0.6, 300),
    (False, True, 0.1, 0.5, 50),
])
def test_nms_equals_the_original(tmp_path, monkeypatch, kernel, multi_label, agnostic, conf, iou, max_det):
    """With torchvision's kernel (GPU images, test environments) and with the plain-torch one (CPU image)."""
    import torchvision

    monkeypatch.setattr(utils.nms, "NMS_KERNEL", torchvision.ops.nms if kernel == "torchvision" else greedy_nms)
    prediction = random_predictions(seed=int(conf * 1000) + max_det)
    prediction[1, :, 4] = 0.0  # an image with nothing over the threshold
    io = tmp_path / "io.pt"
    torch.save({"prediction": prediction}, io)
    oracle("nms", io, conf, iou, int(multi_label), int(agnostic), max_det)
    expected = load_plain(io)["detections"]
    ours, indices = non_max_suppression(prediction.clone(), conf, iou, multi_label=multi_label, agnostic=agnostic,
                                        max_det=max_det, return_indices=True)
    for mine, theirs, idx, pred in zip(ours, expected, indices, prediction):
        assert mine.shape == theirs.shape
        assert torch.equal(mine, theirs)
        if len(idx):  # each detection comes from the raw prediction it names
            torch.testing.assert_close(mine[:, :4], xywh_to_xyxy(pred[idx, :4]))
    assert sum(len(d) for d in ours) > 10 and len(ours[1]) == 0


@pytest.mark.parametrize("count,spread", [(0, 100), (1, 100), (700, 60), (3000, 200)])
def test_greedy_nms_keeps_what_torchvision_keeps(count, spread):
    """Clustered boxes (long suppression chains within a block and across blocks), one IoU threshold each."""
    import torchvision

    g = torch.Generator().manual_seed(count)
    centres = torch.rand(max(count // 20, 1), 2, generator=g) * spread
    xy = centres[torch.randint(0, centres.shape[0], (count,), generator=g)] + torch.randn(count, 2, generator=g) * 6
    wh = torch.rand(count, 2, generator=g) * 30 + 1
    boxes = torch.cat((xy - wh / 2, xy + wh / 2), 1)
    scores = torch.rand(count, generator=g)
    kept = {}
    for iou in (0.3, 0.45, 0.7):
        expected = torchvision.ops.nms(boxes, scores, iou)
        assert torch.equal(greedy_nms(boxes, scores, iou), expected)
        kept[iou] = len(expected)
    assert count < 700 or 20 < kept[0.3] < count / 2 < kept[0.7] < count  # suppression, not of everything


@pytest.mark.parametrize("max_det", [20, 1000])
def test_nms_once_at_a_floor_gives_what_nms_keeps_at_each_higher_threshold(max_det):
    """Mining reads boxes at a lower score than the task's conf_thres: NMS runs once, at the lower, and the
    detections at conf_thres and at any threshold between are exactly those of their own NMS runs."""
    from utils.data.letterboxed import ImageMeta
    from utils.inference import detect

    prediction = random_predictions(seed=7)
    prediction[..., 2:4] *= 0.2  # small boxes: little suppression, so the thresholds keep different numbers
    prediction[0, :, 4:] = (prediction[0, :, 4:] * 8).ceil() / 8  # image 0: scores on a few levels, ties throughout
    metas = [ImageMeta(i, (320, 320), (1.0, 1.0), (0.0, 0.0)) for i in range(3)]
    out = detect(lambda images: (prediction, []), torch.zeros(3, 3, 8, 8), metas, 0.25, 0.45, max_det, floor=0.05)
    assert out.floor == 0.05
    for conf, (dets, indices) in [(0.25, (out.detections, out.indices)), (0.05, out.above(0.05)),
                                  (0.12, out.above(0.12)), (0.25, out.above(0.25))]:
        expected, expected_indices = non_max_suppression(prediction, conf, 0.45, max_det=max_det, return_indices=True)
        for got, want, got_i, want_i in zip(dets, expected, indices, expected_indices):
            assert torch.equal(got, want) and torch.equal(got_i, want_i)
    counts = [len(d) for d in out.above(0.05)[0]], [len(d) for d in out.detections]
    if max_det == 20:  # max_det cuts both: the 20 best kept at 0.05 are those over 0.25 too
        assert counts[0] == counts[1] == [20, 20, 20]
    else:
        assert sum(counts[0]) > sum(counts[1]) > 30
    with pytest.raises(ValueError):
        out.above(0.01)  # below what NMS ran at: not derivable
    plain = detect(lambda images: (prediction, []), torch.zeros(3, 3, 8, 8), metas, 0.25, 0.45, max_det)
    assert plain.floor == 0.25 and all(torch.equal(a, b) for a, b in zip(plain.detections, out.detections))


def test_suppress_reports_the_highest_tied_score_and_above_reruns_nms_only_over_it(monkeypatch):
    """NMS orders tied candidates as the original's argsort happens to; it says per image the highest score two
    candidates share, so detections derived at that threshold or higher need no NMS of their own, and only those
    below it do; an unreadable image reports no tie."""
    import utils.inference
    from utils.data.letterboxed import ImageMeta
    from utils.inference import detect
    from utils.nms import suppress

    prediction = torch.zeros(3, 5, 5 + 2)
    prediction[..., 0] = torch.arange(5) * 50.0  # apart: nothing suppressed
    prediction[..., 1:4] = 20.0
    prediction[..., 4] = 1.0
    prediction[0, :, 5] = torch.tensor([0.9, 0.7, 0.7, 0.3, 0.3])
    prediction[1, :, 5] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    prediction[2, :, 5] = torch.tensor([0.9, 0.8, 0.6, 0.6, 0.02])
    assert suppress(prediction, 0.05, report_ties=True).highest_tie == [pytest.approx(0.7), -float("inf"),
                                                                         pytest.approx(0.6)]
    assert suppress(prediction, 0.65, report_ties=True).highest_tie == [pytest.approx(0.7), -float("inf"),
                                                                         -float("inf")]
    assert suppress(prediction, 0.05).highest_tie is None  # validation and plain inference skip the scan

    metas = [ImageMeta(i, (320, 320), (1.0, 1.0), (0.0, 0.0)) for i in range(3)]
    out = detect(lambda images: (prediction, []), torch.zeros(3, 3, 8, 8), metas, 0.25, 0.45, 300, floor=0.05)
    runs = []

    def counted(*args, **kwargs):
        runs.append(args)
        return suppress(*args, **kwargs)

    monkeypatch.setattr(utils.inference, "suppress", counted)
    exactly_tied = float(torch.tensor(0.7))  # the tied scores themselves: no longer candidates, so no rerun
    for conf, reruns in [(0.75, 0), (exactly_tied, 0), (0.65, 1), (0.5, 2)]:
        runs.clear()
        derived, derived_indices = out.above(conf)
        assert len(runs) == reruns
        expected, expected_indices = non_max_suppression(prediction, conf, 0.45, return_indices=True)
        for got, want, got_i, want_i in zip(derived, expected, derived_indices, expected_indices):
            assert torch.equal(got, want) and torch.equal(got_i, want_i)
    metas[0] = ImageMeta(0, (320, 320), (1.0, 1.0), (0.0, 0.0), error="unreadable")
    blanked = detect(lambda images: (prediction, []), torch.zeros(3, 3, 8, 8), metas, 0.25, 0.45, 300, floor=0.05)
    assert blanked.at_floor.highest_tie[0] == -float("inf") and len(blanked.above(0.5)[0][0]) == 0


def clustered_boxes(count: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(count // 20, 1), 2, generator=g) * spread
    xy = centres[torch.randint(0, centres.shape[0], (count,), generator=g)] + torch.randn(count, 2, generator=g) * 6
    wh = torch.rand(count, 2, generator=g) * 30 + 1
    scores, order = torch.rand(count, generator=g).sort(descending=True)
    return torch.cat((xy - wh / 2, xy + wh / 2), 1)[order], scores


@pytest.mark.parametrize("kernel", ["compiled", "greedy_nms"])
def test_first_kept_equals_the_whole_run(monkeypatch, kernel):
    """NMS over growing prefixes of the candidates stops as soon as one keeps max_det: the same boxes, in the same
    order, as the kernel over all of them, cut to max_det; and it did stop early where it could."""
    whole_kernel = utils.nms.NMS_KERNEL if kernel == "compiled" else greedy_nms
    sizes = []

    def counted(boxes, scores, iou):
        sizes.append(len(scores))
        return whole_kernel(boxes, scores, iou)

    monkeypatch.setattr(utils.nms, "NMS_KERNEL", counted)
    boxes, scores = clustered_boxes(3000, 400, seed=1)
    tied = (scores * 4).floor() / 4  # four score levels: ties everywhere, kept in the candidates' order
    in_order = torch.arange(len(scores), 0, -1).float()  # (torchvision before 0.12 sorts ties in no fixed order)
    for iou in (0.3, 0.6):
        for max_det in (40, 300):
            expected = whole_kernel(boxes, in_order, iou)[:max_det]
            assert torch.equal(utils.nms.first_kept(boxes, tied, iou, max_det), expected)
    for iou in (0.3, 0.6):
        for max_det in (1, 40, 300, 1000, 5000):
            expected = whole_kernel(boxes, scores, iou)[:max_det]
            sizes.clear()
            assert torch.equal(utils.nms.first_kept(boxes, scores, iou, max_det), expected)
            if len(expected) < max_det:  # fewer kept than asked: the last prefix was the whole list
                assert sizes[-1] >= len(scores)
            elif max_det <= 300:  # a prefix of at most a third of the candidates held them all
                assert sizes[-1] <= 1000


def test_nms_loads_the_compiled_kernel_without_the_torchvision_package():
    """Importing torchvision costs seconds at every start: its operators alone are loaded."""
    import subprocess
    import sys

    code = ("import sys, utils.nms as n; print(n.NMS_KERNEL is not n.greedy_nms, 'torchvision' in sys.modules, "
            "'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False", "False"]


def test_letterbox_equals_the_original(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=shape, dtype=np.uint8) for shape in
              [(480, 640, 3), (640, 480, 3), (123, 457, 3), (1000, 50, 3), (64, 64, 3)]]
    io = tmp_path / "io.pt"
    torch.save({"images": [torch.from_numpy(i) for i in images]}, io)
    for size, auto in ((320, False), (640, False), (320, True)):
        oracle("letterbox", io, size, int(auto))
        expected = load_plain(io)
        for img, theirs, geometry in zip(images, expected["letterboxed"], expected["geometry"]):
            mine, ratio, pad = letterbox(img, size, auto=auto)
            assert np.array_equal(mine, theirs.numpy())
            assert [*ratio, *pad] == pytest.approx(geometry.tolist())


def test_boxes_round_trip_through_the_letterbox():
    original = (300, 500)  # h, w
    img = np.zeros((*original, 3), dtype=np.uint8)
    boxed, ratio, pad = letterbox(img, 320)
    assert boxed.shape == (320, 320, 3)
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0], [400.0, 0.0, 500.0, 300.0]])
    in_letterbox = boxes.clone()
    in_letterbox[:, [0, 2]] = in_letterbox[:, [0, 2]] * ratio[0] + pad[0]
    in_letterbox[:, [1, 3]] = in_letterbox[:, [1, 3]] * ratio[1] + pad[1]
    back = unletterbox_boxes(in_letterbox, ratio, pad, original)
    torch.testing.assert_close(back, boxes)
    assert ratio == (0.64, 0.64) and pad == (0.0, 64.0)  # YOLOv5's gain and centred padding


def test_box_helpers_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[5.0, 5, 15, 15], [20.0, 20, 30, 30], [0.0, 0, 10, 10]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[25 / 175, 0.0, 1.0]]))
    xywh = torch.tensor([[5.0, 5, 10, 10]])
    torch.testing.assert_close(xywh_to_xyxy(xywh), a)
    torch.testing.assert_close(xyxy_to_xywh(a), xywh)
