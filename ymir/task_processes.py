"""How a task runs as processes, one per GPU under torchrun: how many it wants, the process group's lifetime, and
the stanza every task goes through (`run_in_processes`).

The first process sees WORLD_SIZE unset, decides how many processes the task needs and, when more than one,
starts them through `ymir.launch` and supervises them; each of them then runs the task inside `process_group`.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

from utils.ranks import rank_and_world
from ymir.context import TaskContext
from ymir.devices import select_device
from ymir.launch import run_distributed

CPU_PROCESSES_ENV = "YMIR_CPU_PROCESSES"  # CPU runs: this many processes (gloo); used by tests and benchmarks


def wanted_processes(gpu_ids: Sequence[int]) -> int:
    return len(gpu_ids) if gpu_ids else max(1, int(os.environ.get(CPU_PROCESSES_ENV, "1")))


def needs_launch(gpu_ids: Sequence[int], nnodes: int = 1) -> bool:
    """True in the first process of a task that runs as several processes, on one node or several."""
    return (wanted_processes(gpu_ids) > 1 or nnodes > 1) and rank_and_world()[1] == 1


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


def run_in_processes(ctx: TaskContext, timeout: datetime.timedelta, task: Callable[[torch.device], None]) -> None:
    """Every task's launch: the first process of a task that wants several starts them and supervises them
    (ymir.launch); each process, or the only one, runs `task` on its device inside the process group (`timeout`
    bounds how long the ranks wait for each other)."""
    gpu_ids = ctx.config.platform.gpu_ids
    if needs_launch(gpu_ids, ctx.nodes.nnodes):
        run_distributed(ctx, wanted_processes(gpu_ids))
        return
    device = select_device(gpu_ids)
    with process_group(device, timeout=timeout):
        task(device)
