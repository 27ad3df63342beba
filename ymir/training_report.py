"""What a person looks at during and after training: TensorBoard scalars and pictures, and results.csv."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from utils.boxes import xywh_to_xyxy
from utils.metrics import DetectionMetrics
from utils.plots import confusion_image, draw_boxes, mosaic_of, pr_curve_image
from utils.trainer import EpochReport

LOG = logging.getLogger(__name__)
DISPLAY_SCORE = 0.25  # predictions drawn in TensorBoard's pictures: YOLOv5's detect.py threshold
CSV_COLUMNS = ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/precision", "metrics/recall",
               "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "x/lr0", "x/lr1", "x/lr2", "seconds"]


class TrainingReport:
    def __init__(self, folder: Path, names: Sequence[str]):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.names = list(names)
        self.writer = SummaryWriter(str(self.folder))
        self.failed = False
        self.csv_path = self.folder / "results.csv"
        with open(self.csv_path, "w", newline="") as f:
            csv.writer(f).writerow(CSV_COLUMNS)

    def epoch(self, r: EpochReport) -> None:
        """Write the epoch's row and pictures. A failure here (a full disk, a broken event file) is logged and
        ends the report, never the training."""
        if self.failed:
            return
        try:
            self._write_epoch(r)
        except Exception as exc:
            self.failed = True
            LOG.warning("TensorBoard and results.csv are no longer written (%s: %s); training goes on",
                        type(exc).__name__, exc)

    def _write_epoch(self, r: EpochReport) -> None:
        m = r.metrics
        row = [r.epoch + 1, *r.losses, m.precision, m.recall, m.map50, m.map50_95, *r.lrs[:3], round(r.seconds, 2)]
        with open(self.csv_path, "a", newline="") as f:
            csv.writer(f).writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        for key, value in zip(CSV_COLUMNS[1:-1], row[1:-1]):
            self.writer.add_scalar(key, value, r.epoch + 1)
        step = r.epoch + 1
        if r.train_examples:
            self.writer.add_image("train/batches", self._train_picture(r.train_examples), step, dataformats="HWC")
        if r.examples:
            self.writer.add_image("val/predictions", self.prediction_picture(r.examples), step, dataformats="HWC")
        if r.best:
            self.best_pictures(m, r.confusion, step)
        self.writer.flush()

    def prediction_picture(self, examples) -> np.ndarray:
        """Each validation image twice, side by side: its ground truth, and the predictions scoring at least
        DISPLAY_SCORE (validation keeps them down to 0.001, which would bury the picture)."""
        pictures = []
        for img, det, truth in examples:
            shown = det[det[:, 4] >= DISPLAY_SCORE]
            pictures.append(draw_boxes(img, truth[:, 1:5].numpy(), truth[:, 0].numpy(), self.names))
            pictures.append(draw_boxes(img, shown[:, :4].numpy(), shown[:, 5].numpy(), self.names,
                                       shown[:, 4].numpy()))
        return mosaic_of(pictures)

    def best_pictures(self, m: DetectionMetrics, confusion, step: int) -> None:
        """Written at the epoch that became the best, so that each best's curves stay apart in TensorBoard."""
        if m.per_class is not None:
            pc = m.per_class
            picture = pr_curve_image(pc.curves["pr"], self.names, pc.classes, pc.ap[:, 0])
            self.writer.add_image("best/pr_curve", picture, step, dataformats="HWC")
        if confusion is not None:
            self.writer.add_image("best/confusion_matrix", confusion_image(confusion, self.names), step,
                                  dataformats="HWC")

    def _train_picture(self, examples) -> np.ndarray:
        images, targets = examples[0]
        pictures = []
        for k, img in enumerate((images * 255).clamp(0, 255).byte()):
            t = targets[targets[:, 0] == k]
            h, w = img.shape[1:]
            boxes = xywh_to_xyxy(t[:, 2:6].numpy() * np.array([w, h, w, h]))
            pictures.append(draw_boxes(img, boxes, t[:, 1].numpy(), self.names))
        return mosaic_of(pictures)

    def close(self) -> None:
        try:
            self.writer.close()
        except Exception as exc:
            LOG.warning("TensorBoard writer could not be closed (%s: %s)", type(exc).__name__, exc)
