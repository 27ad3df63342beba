"""The device a process computes on, from config `gpu_id` ('' means CPU)."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import torch

from utils.ranks import is_main_process
from ymir.errors import CudaError, NoGpuError

LOG = logging.getLogger(__name__)


def select_device(gpu_ids: Sequence[int]) -> torch.device:
    """CPU when no GPU is asked for; else this process's GPU (LOCAL_RANK under torchrun, otherwise the first).

    YMIR starts the container with only the chosen GPUs visible, numbered from 0, so `gpu_id` is used as is.
    """
    if not gpu_ids:
        if is_main_process():
            LOG.info("%s", cpu_reason())
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


def cpu_reason() -> str:
    """Why the task runs on the CPU, in the words a user checking a GPU image looks for."""
    built_for = f"CUDA {torch.version.cuda}" if torch.version.cuda else \
        f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else None
    if built_for is None:
        return f"running on the CPU: config gpu_id is empty and this torch ({torch.__version__}) is a CPU-only build"
    if not torch.cuda.is_available():
        return f"running on the CPU: config gpu_id is empty; torch {torch.__version__} is built with {built_for} " \
               "but CUDA is not available here (no GPU or driver visible)"
    return f"running on the CPU: config gpu_id is empty, although CUDA sees {torch.cuda.device_count()} GPU(s)"
