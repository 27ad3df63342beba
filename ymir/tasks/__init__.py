"""The three YMIR tasks: training, mining and inference."""
from __future__ import annotations

import logging

from models.yolo import DetectionModel

LOG = logging.getLogger(__name__)


def fitted_image_size(model: DetectionModel, img_size: int) -> int:
    """The size a task runs `model` at: the configured one, rounded up where the model needs it (with a warning)."""
    fitted = model.fit_image_size(img_size)
    if fitted != img_size:
        LOG.warning("img_size %d is not a multiple of the model's largest stride %d: using %d", img_size,
                    model.image_size_step, fitted)
    return fitted
