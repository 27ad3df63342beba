"""Training hyper-parameters: YOLOv5's hyp.scratch-low defaults."""
from __future__ import annotations

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
    "label_smoothing": 0.0,
}
NOMINAL_BATCH = 64  # gradients accumulate up to this many images per optimizer step
