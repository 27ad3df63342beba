"""Optimiser, learning-rate schedules and warmup, as YOLOv5 sets them up."""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np
import torch
import torch.nn as nn


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, decay: float) -> torch.optim.Optimizer:
    """Three parameter groups: biases (group 0, no decay), conv/linear weights (decay), norm weights (no decay)."""
    biases, decayed, norm_weights = [], [], []
    norms = tuple(v for k, v in nn.__dict__.items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias":
                biases.append(p)
            elif pname == "weight" and isinstance(module, norms):
                norm_weights.append(p)
            else:
                decayed.append(p)
    if name == "Adam":
        optimizer = torch.optim.Adam(biases, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        optimizer = torch.optim.AdamW(biases, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    elif name == "SGD":
        optimizer = torch.optim.SGD(biases, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    optimizer.add_param_group({"params": decayed, "weight_decay": decay})
    optimizer.add_param_group({"params": norm_weights, "weight_decay": 0.0})
    return optimizer


def lr_lambda(epochs: int, lrf: float, cosine: bool) -> Callable[[int], float]:
    """Learning-rate factor by epoch: linear from 1 to lrf, or a half cosine from 1 to lrf."""
    if cosine:
        return lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf


def build_scheduler(optimizer: torch.optim.Optimizer, lf: Callable[[int], float]):
    """Per-epoch LR factor `lf`, stepped after each epoch, with YOLOv5's one-epoch lag: the scheduler is rewound
    so its first step lands on lf(0) again, and epoch e >= 1 (after warmup) trains at lr0 * lf(e - 1)."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    scheduler.last_epoch = -1
    return scheduler


def warmup(optimizer: torch.optim.Optimizer, step: int, warmup_steps: int, epoch: int, lf: Callable[[int], float],
           hyp: Dict[str, float]) -> None:
    """During the first warmup_steps batches, ramp lr from 0 (biases: from warmup_bias_lr down) to the schedule,
    and momentum from warmup_momentum to momentum."""
    xi = [0, warmup_steps]
    for j, group in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 0 else 0.0
        group["lr"] = float(np.interp(step, xi, [start, group["initial_lr"] * lf(epoch)]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(step, xi, [hyp["warmup_momentum"], hyp["momentum"]]))


def warmup_accumulation(step: int, warmup_steps: int, nominal_batch: int, batch_size: int) -> int:
    """Batches per optimizer step, ramping from 1 to nominal_batch / batch_size during warmup."""
    return max(1, int(np.interp(step, [0, warmup_steps], [1, nominal_batch / batch_size]).round()))
