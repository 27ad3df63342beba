"""Which process of a distributed run this is: asked of torch.distributed once its process group exists, of
torchrun's environment before that (and (0, 1) in a plain process)."""
from __future__ import annotations

import os
from typing import Tuple

import torch.distributed as dist
import torch.nn as nn


def rank_and_world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Rank 0: the one process that validates, saves and reports."""
    return rank_and_world()[0] == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
