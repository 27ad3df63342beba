"""Training hyper-parameters: YOLOv5's hyp.scratch-low defaults."""
from __future__ import annotations

import math

SCRATCH_LOW = {
    "lr0": 0.01,  # initial learning rate (SGD)
    "lrf": 0.01,  # final learning rate = lr0 * lrf
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.1,
    "box": 0.05,  # loss gains
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 0.2,
    "anchor_t": 4.0,  # largest anchor/target size ratio for a match
    "fl_gamma": 0.0,
    "hsv_h": 0.015,  # augmentation
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
    "copy_paste": 0.0,
}  # label smoothing is a flag (--label-smoothing), as in YOLOv5: TrainSettings.training_hyp adds it
NOMINAL_BATCH = 64  # gradients accumulate up to this many images per optimizer step

# What each value may be for training to make sense (wider than YOLOv5's evolution ranges, which are a search
# space): (low, high, low_inclusive, high_inclusive). Every value must also be finite.
VALID_RANGES = {
    "lr0": (0.0, 10.0, False, True), "lrf": (0.0, 1.0, False, True),
    "momentum": (0.0, 1.0, True, False), "weight_decay": (0.0, 1.0, True, True),
    "warmup_epochs": (0.0, 1000.0, True, True), "warmup_momentum": (0.0, 1.0, True, False),
    "warmup_bias_lr": (0.0, 10.0, True, True),
    "box": (0.0, 100.0, True, True), "cls": (0.0, 100.0, True, True), "cls_pw": (0.0, 100.0, False, True),
    "obj": (0.0, 100.0, True, True), "obj_pw": (0.0, 100.0, False, True), "iou_t": (0.0, 1.0, True, True),
    "anchor_t": (1.0, 100.0, False, True), "fl_gamma": (0.0, 10.0, True, True),
    "hsv_h": (0.0, 1.0, True, True), "hsv_s": (0.0, 1.0, True, True), "hsv_v": (0.0, 1.0, True, True),
    "degrees": (0.0, 180.0, True, True), "translate": (0.0, 1.0, True, False), "scale": (0.0, 1.0, True, False),
    "shear": (0.0, 90.0, True, False), "perspective": (0.0, 0.01, True, True),
    "flipud": (0.0, 1.0, True, True), "fliplr": (0.0, 1.0, True, True), "mosaic": (0.0, 1.0, True, True),
    "mixup": (0.0, 1.0, True, True), "copy_paste": (0.0, 1.0, True, True), "label_smoothing": (0.0, 1.0, True, False),
}


def describe_range(key: str) -> str:
    low, high, low_in, high_in = VALID_RANGES[key]
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def in_range(key: str, value: float) -> bool:
    low, high, low_in, high_in = VALID_RANGES[key]
    return math.isfinite(value) and (low <= value if low_in else low < value) and \
        (value <= high if high_in else value < high)
