"""The device a process computes on, from config `gpu_id` ('' means CPU)."""
from __future__ import annotations

import os
from typing import Sequence

import torch

from ymir.errors import CudaError, NoGpuError


def select_device(gpu_ids: Sequence[int]) -> torch.device:
    """CPU when no GPU is asked for; else this process's GPU (LOCAL_RANK under torchrun, otherwise the first).

    YMIR starts the container with only the chosen GPUs visible, numbered from 0, so `gpu_id` is used as is.
    """
    if not gpu_ids:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NoGpuError(f"config gpu_id asks for GPU(s) {list(gpu_ids)} but CUDA sees no GPU")
    visible = torch.cuda.device_count()
    if visible < len(gpu_ids):
        raise CudaError(f"config gpu_id asks for {len(gpu_ids)} GPU(s) {list(gpu_ids)} but only {visible} visible")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", gpu_ids[local_rank])
    torch.cuda.set_device(device)
    return device
