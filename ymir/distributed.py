"""One process per GPU under torchrun: how many processes a task wants, and the process group's lifetime.

The first process sees WORLD_SIZE unset, decides how many processes the task needs and, when more than one,
starts them through `ymir.launch`; each of them then runs the task inside `process_group`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from utils.dist import rank_and_world

CPU_PROCESSES_ENV = "YMIR_CPU_PROCESSES"  # CPU runs: this many processes (gloo); used by tests and benchmarks


def wanted_processes(gpu_ids: Sequence[int]) -> int:
    return len(gpu_ids) if gpu_ids else max(1, int(os.environ.get(CPU_PROCESSES_ENV, "1")))


def needs_launch(gpu_ids: Sequence[int]) -> bool:
    """True in the first process of a task that runs as several processes."""
    return wanted_processes(gpu_ids) > 1 and rank_and_world()[1] == 1


@contextlib.contextmanager
def process_group(device: torch.device, timeout: datetime.timedelta) -> Iterator[None]:
    """NCCL on GPU, gloo on CPU; a no-op in a single process. A dead rank ends the group through torchrun; the
    timeout bounds how long the others wait for a slow rank (rank 0's validation and export in training)."""
    if rank_and_world()[1] == 1:
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
