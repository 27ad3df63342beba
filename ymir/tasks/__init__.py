"""The three YMIR tasks: training, mining and inference."""
from __future__ import annotations

import logging
from typing import Optional

from models.yolo import DetectionModel

LOG = logging.getLogger(__name__)


def fitted_image_size(model: DetectionModel, img_size: int) -> int:
    """The size a task runs `model` at: the configured one, rounded up where the model needs it (with a warning)."""
    fitted = model.fit_image_size(img_size)
    if fitted != img_size:
        LOG.warning("img_size %d is not a multiple of the model's largest stride %d: using %d", img_size,
                    model.image_size_step, fitted)
    return fitted


DEFAULT_IMG_SIZE = 640  # YOLOv5's, and what earlier templates wrote for mining and inference


def prediction_image_size(configured: int, trained: Optional[int], forced: bool = False) -> int:
    """The size mining and inference run a model at, before rounding to its stride, and why (logged).

    0 (the templates' value) is the size the model was trained at, as its checkpoint records it (640 when it does
    not). 640 is read the same way unless `forced`: earlier templates wrote it for everyone, so it cannot be told
    apart from a choice. Any other value is used as it is, with a warning when the model learnt at another size."""
    # a size recorded in the file counts only where a config could have set it (32 to 8192 px)
    trained = int(trained) if isinstance(trained, int) and not isinstance(trained, bool) \
        and 32 <= trained <= 8192 else None
    if configured == 0 or (configured == DEFAULT_IMG_SIZE and trained and trained != configured and not forced):
        size = trained or DEFAULT_IMG_SIZE
        if configured:
            LOG.warning("img_size %d, the earlier templates' default, is taken as unset: running at %d, the size "
                        "the model was trained at (set force_img_size: true to run at %d)", configured, size,
                        configured)
        LOG.info("image size %d: %s", size, "the size the model was trained at" if trained else
                 "the model's file does not record its training size; YOLOv5's default")
        return size
    if trained and trained != configured:
        LOG.warning("image size %d (config img_size), but the model was trained at %d: predictions may differ "
                    "much from what it learnt", configured, trained)
    else:
        LOG.info("image size %d (config img_size)", configured)
    return configured
