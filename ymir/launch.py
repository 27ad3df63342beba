"""Several GPUs: the task runs again under torchrun, one process per GPU, and this process supervises.

Training uses DDP; mining and inference shard the candidates and gather the results on rank 0.

torchrun stops every rank as soon as one fails; this process then reports rank 0's error (the code it wrote
to monitor.txt) or the failure of the group. No rank outlives the task: stopping this process ends torchrun and
every rank (listed while they are still its descendants: torchrun starts each rank in a session of its own), and
each rank stops itself when torchrun or this process is gone (ymir.processes.stop_when_orphaned).
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from ymir.context import TaskContext
from ymir.errors import UNKNOWN_ERROR, ExecutorError
from ymir.monitor import STATE_ERROR, STATE_RUNNING, read_monitor_line
from ymir.nodes import NodeGroup
from ymir.processes import SUPERVISOR_ENV, terminate_tree

LOG = logging.getLogger(__name__)
START = Path(__file__).resolve().parent.parent / "start.py"


def free_port() -> int:
    """A port the system just gave out on loopback (then released for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankFailed(ExecutorError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def torchrun_command(nodes: NodeGroup, processes: int, in_root: Path, out_root: Path,
                     environ: Mapping[str, str]) -> Tuple[List[str], Dict[str, str]]:
    """torchrun's command and environment: every rendezvous setting on the command line, and none of torchrun's
    PET_* variables, which would be the defaults of the settings not given (a c10d backend that ignores the node
    rank, a standalone rendezvous, redirected output): the scheduler's PET_* were read into `nodes` already."""
    rendezvous = nodes.torchrun_arguments() if nodes.nnodes > 1 else \
        ("--rdzv_backend=static", "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1",
         f"--master_port={free_port()}")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", *rendezvous,
               "--max_restarts=0", str(START), "--in", str(in_root), "--out", str(out_root)]
    env = {k: v for k, v in environ.items() if not k.startswith("PET_")}
    env.update(OMP_NUM_THREADS=environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1",
               **{SUPERVISOR_ENV: str(os.getpid())})
    return command, env


def scheduler_processes_differ(environ: Mapping[str, str], processes: int) -> Optional[str]:
    """A warning where the scheduler planned another number of processes per node (PET_NPROC_PER_NODE, as
    Kubeflow's nprocPerNode sets it) than this node starts (one per GPU of gpu_id), else None."""
    planned = environ.get("PET_NPROC_PER_NODE", "").strip()
    if not planned or planned == str(processes):
        return None
    return (f"PET_NPROC_PER_NODE is {planned!r}, but this node starts {processes} training process(es), one per GPU "
            "in gpu_id: the job's world size follows gpu_id on each node")


def run_distributed(ctx: TaskContext, processes: int = 0) -> None:
    processes = processes or len(ctx.config.platform.gpu_ids)
    nodes = ctx.nodes
    differ = scheduler_processes_differ(os.environ, processes)
    if differ:
        LOG.warning("%s", differ)
    command, env = torchrun_command(nodes, processes, ctx.mapper.in_root, ctx.mapper.out_root, os.environ)
    if nodes.nnodes > 1:
        LOG.info("%s; %s", nodes.describe(), "this node writes /out" if nodes.is_first else
                 "global rank 0 on the first node writes /out: this node writes nothing there")
    LOG.info("starting %d processes: %s", processes, " ".join(command))
    launcher = subprocess.Popen(command, env=env)
    try:
        code = launcher.wait()
    except BaseException:  # stopped (SIGTERM becomes SystemExit) while the ranks run: end torchrun and every rank
        terminate_tree(launcher.pid)
        raise
    if code != 0:
        if not nodes.is_first:  # rank 0's diagnosis, if it has one, is on the first node
            raise ExecutorError(f"a process of the task failed and the group was stopped (torchrun exit code {code})"
                                f"; {nodes.describe()}: see this node's log above and the other nodes' logs (a node "
                                "that did not join within 10 minutes, or went away, stops the group too)")
        raise _rank_error(ctx.env.output.monitor_file, code, nodes.nnodes)
    if not nodes.is_first:
        return
    ctx.monitor.percent = max(ctx.monitor.percent, 0.99)  # rank 0 reported progress; the supervisor finishes
    finished = read_monitor_line(ctx.env.output.monitor_file)
    if finished is not None and finished.state == STATE_RUNNING and finished.message:
        ctx.monitor.message = finished.message  # rank 0's note (e.g. mining cannot rank) stays in the last line


def _rank_error(monitor_file: Path, exit_code: int, nnodes: int = 1) -> ExecutorError:
    """Rank 0's own diagnosis when it has one (a config, data, model, memory or NaN error); otherwise the group's
    failure, with what rank 0 saw (often only that a peer went away)."""
    seen = ""
    line = read_monitor_line(monitor_file)
    if line is not None and line.state == STATE_ERROR and line.message and \
            not line.message.startswith("stopped by signal"):
        if line.code != UNKNOWN_ERROR:
            return RankFailed(line.code, line.message)
        seen = f"; rank 0 reported: {line.message}"
    others = f"; one of the {nnodes} nodes may have failed or not joined within 10 minutes: see every node's log" \
        if nnodes > 1 else ""
    return ExecutorError(f"a process of the task failed and the group was stopped (torchrun exit code {exit_code})"
                         f"{seen}{others}")
