"""The neck's feature maps, one per detection level, as the Detect head receives them on each forward pass.

Mining describes each detected box by the features at the cell that predicted it (`ymir.mining.diverse`); both
detectors (torch and onnxruntime) return these maps beside their usual outputs when asked to.
"""
from __future__ import annotations

from typing import List, Optional

import torch

from models.yolo import DetectionModel


class NeckFeatures:
    """Keeps the Detect head's inputs (B, C_level, H_level, W_level) from the model's latest forward pass."""

    def __init__(self, model: DetectionModel):
        self.maps: Optional[List[torch.Tensor]] = None
        self._handle = model.detect.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs) -> None:
        self.maps = list(inputs[0])  # a copy of the list: the head replaces its entries with its own outputs

    def take(self) -> List[torch.Tensor]:
        maps, self.maps = self.maps, None
        if maps is None:
            raise RuntimeError("no forward pass has run since the neck's features were last taken")
        return maps
