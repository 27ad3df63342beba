"""The exponential moving average (EMA) of a model's weights, which YOLOv5 validates and saves."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from utils.ranks import unwrap


class ModelEMA:
    """Exponential moving average of the model's state, with a decay that ramps up from 0 (tau = 2000 updates)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = copy.deepcopy(unwrap(model)).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        state = unwrap(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v *= d
                v += (1 - d) * state[k].detach()
