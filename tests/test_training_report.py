"""TensorBoard's pictures: predictions a person can read (above a display score, beside the ground truth), and each
picture at the step of its epoch."""
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from utils.metrics import DetectionMetrics
from utils.trainer import EpochReport
from ymir.training_report import DISPLAY_SCORE, TrainingReport

SIDE = 96


def example():
    image = torch.zeros(3, SIDE, SIDE, dtype=torch.uint8)
    detections = torch.tensor([[4.0, 30.0, 20.0, 46.0, 0.9, 0.0],  # drawn
                               [60.0, 60.0, 90.0, 90.0, DISPLAY_SCORE / 2, 0.0]])  # kept by validation, not drawn
    truth = torch.tensor([[0.0, 50.0, 10.0, 70.0, 30.0]])
    return image, detections, truth


def test_predictions_are_drawn_above_the_display_score_beside_the_ground_truth(tmp_path):
    report = TrainingReport(tmp_path, ["a"])
    picture = report.prediction_picture([example()])
    report.close()
    assert picture.shape == (SIDE, 2 * SIDE, 3)
    truth_half, predicted_half = picture[:, :SIDE], picture[:, SIDE:]
    assert truth_half[30, 50:71].any() and not truth_half[90, 60:91].any()  # the ground truth's bottom edge
    assert predicted_half[46, 4:21].any()  # the confident box's bottom edge
    assert not predicted_half[90, 60:91].any() and not predicted_half[60:91, 90].any()  # the faint one is left out


def test_every_picture_is_written_at_its_epochs_step(tmp_path):
    report = TrainingReport(tmp_path, ["a", "b"])
    metrics = DetectionMetrics(0.5, 0.5, 0.4, 0.2, 1, 1, 1)
    for epoch, best in ((0, True), (1, False), (2, True)):
        report.epoch(EpochReport(epoch, [0.1] * 3, [0.01] * 3, metrics, best, 1.0, confusion=np.eye(3),
                                 examples=[example()]))
    report.close()
    events = EventAccumulator(str(tmp_path), size_guidance={IMAGES: 0}).Reload()
    assert [e.step for e in events.Images("best/confusion_matrix")] == [1, 3]
    assert [e.step for e in events.Images("val/predictions")] == [1, 2, 3]
