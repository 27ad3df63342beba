"""Detection metrics exactly as YOLOv5 computes them: matching at IoU 0.5:0.95, per-class AP (101-point
interpolation of the precision envelope), P and R at the best mean-F1 confidence, and a confusion matrix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from utils.boxes import box_iou

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
_EPS = 1e-16
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed it


def match_predictions(detections: torch.Tensor, labels: torch.Tensor,
                      iou_thresholds: torch.Tensor = IOU_THRESHOLDS) -> torch.Tensor:
    """(n, 10) bool: detection i is a true positive at threshold t. detections (n, 6) xyxy, score, class;
    labels (m, 5) class, xyxy. Each label and each detection matches once, highest IoU first."""
    correct = np.zeros((detections.shape[0], iou_thresholds.shape[0]), dtype=bool)
    if not len(labels) or not len(detections):
        return torch.from_numpy(correct)
    iou = box_iou(labels[:, 1:], detections[:, :4])
    same_class = labels[:, 0:1] == detections[:, 5]
    for t, threshold in enumerate(iou_thresholds):
        x = torch.where((iou >= threshold) & same_class)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
            correct[matches[:, 1].astype(int), t] = True
    return torch.from_numpy(correct)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, sampled at 101 recall points."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(_trapezoid(np.interp(x, mrec, mpre), x))


def smooth(y: np.ndarray, fraction: float = 0.05) -> np.ndarray:
    """Box filter of width `fraction` of the curve, edges padded with the end values."""
    nf = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]), 0)
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclass
class ClassMetrics:
    """Per class present in the labels (`classes`): tp and fp counts, P, R, F1 at the chosen confidence, AP
    at each IoU threshold; `curves` holds precision and recall against confidence (1000 points) for plots."""

    tp: np.ndarray
    fp: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray  # (classes, 10)
    classes: np.ndarray
    curves: dict


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray) -> ClassMetrics:
    order = np.argsort(-conf)
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, label_counts = np.unique(target_cls, return_counts=True)
    nc = classes.shape[0]
    px = np.linspace(0, 1, 1000)
    ap = np.zeros((nc, tp.shape[1]))
    p, r = np.zeros((nc, 1000)), np.zeros((nc, 1000))
    pr_curves = []
    for ci, c in enumerate(classes):
        i = pred_cls == c
        n_labels, n_preds = label_counts[ci], i.sum()
        if n_preds == 0 or n_labels == 0:
            pr_curves.append((np.zeros(0), np.zeros(0)))
            continue
        fpc = (1 - tp[i]).cumsum(0)
        tpc = tp[i].cumsum(0)
        recall = tpc / (n_labels + _EPS)
        r[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        precision = tpc / (tpc + fpc)
        p[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j] = average_precision(recall[:, j], precision[:, j])
        pr_curves.append((recall[:, 0], precision[:, 0]))
    f1 = 2 * p * r / (p + r + _EPS)
    best = smooth(f1.mean(0), 0.1).argmax() if nc else 0
    p_best, r_best, f1_best = p[:, best], r[:, best], f1[:, best]
    tp_count = (r_best * label_counts).round()
    fp_count = (tp_count / (p_best + _EPS) - tp_count).round()
    return ClassMetrics(tp_count, fp_count, p_best, r_best, f1_best, ap, classes.astype(int),
                        {"confidence": px, "precision": p, "recall": r, "pr": pr_curves})


@dataclass
class DetectionMetrics:
    precision: float
    recall: float
    map50: float
    map50_95: float
    tp: int
    fp: int
    fn: int
    per_class: Optional[ClassMetrics] = None

    @property
    def fitness(self):
        """What 'best' means: mAP@0.5 (what YMIR shows), ties broken by mAP@0.5:0.95."""
        return (self.map50, self.map50_95)


class MetricAccumulator:
    """Collects per-image matches during a validation pass, then summarises them."""

    def __init__(self, nc: int):
        self.nc = nc
        self.stats: List[tuple] = []
        self.confusion = ConfusionMatrix(nc)

    def add(self, detections: torch.Tensor, labels: torch.Tensor) -> None:
        """detections (n, 6) and labels (m, 5: class, xyxy), both in the same pixel frame."""
        correct = match_predictions(detections, labels)
        self.stats.append((correct, detections[:, 4], detections[:, 5], labels[:, 0]))
        self.confusion.add(detections, labels)

    def compute(self) -> DetectionMetrics:
        if not self.stats:
            return DetectionMetrics(0.0, 0.0, 0.0, 0.0, 0, 0, 0)
        tp, conf, pred_cls, target_cls = (torch.cat(x, 0).cpu().numpy() for x in zip(*self.stats))
        n_labels = len(target_cls)
        if not n_labels or not tp.any():
            return DetectionMetrics(0.0, 0.0, 0.0, 0.0, 0, int(len(conf)), n_labels)
        m = ap_per_class(tp, conf, pred_cls, target_cls)
        tp_count, fp_count = int(m.tp.sum()), int(m.fp.sum())
        return DetectionMetrics(float(m.p.mean()), float(m.r.mean()), float(m.ap[:, 0].mean()),
                                float(m.ap.mean()), tp_count, fp_count, max(0, n_labels - tp_count), m)


class ConfusionMatrix:
    """(nc + 1) x (nc + 1) counts, predicted class by true class; the last row/column is background.
    Detections below `conf` are ignored; a match needs IoU above `iou_thres`."""

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.matrix = np.zeros((nc + 1, nc + 1))
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres

    def add(self, detections: torch.Tensor, labels: torch.Tensor) -> None:
        gt_classes = labels[:, 0].int()
        detections = detections[detections[:, 4] > self.conf]
        if not len(detections):
            for gc in gt_classes:
                self.matrix[self.nc, gc] += 1
            return
        det_classes = detections[:, 5].int()
        iou = box_iou(labels[:, 1:], detections[:, :4])
        x = torch.where(iou > self.iou_thres)
        if x[0].shape[0]:
            matches = torch.cat((torch.stack(x, 1), iou[x[0], x[1]][:, None]), 1).cpu().numpy()
            if x[0].shape[0] > 1:
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
                matches = matches[matches[:, 2].argsort()[::-1]]
                matches = matches[np.unique(matches[:, 0], return_index=True)[1]]
        else:
            matches = np.zeros((0, 3))
        m0, m1, _ = matches.transpose().astype(int)
        for i, gc in enumerate(gt_classes):
            j = m0 == i
            if len(matches) and j.sum() == 1:
                self.matrix[det_classes[m1[j]], gc] += 1
            else:
                self.matrix[self.nc, gc] += 1
        for i, dc in enumerate(det_classes):
            if not (m1 == i).any():
                self.matrix[dc, self.nc] += 1
