"""Which machines a task spans: one (YMIR's own launch), or several nodes started by a cluster scheduler.

Every node runs the image's start.py once, with its own /in (the same task) and /out; each starts torchrun for
its own GPUs (config `gpu_id`), and the nodes meet at the first node's address (torchrun's static rendezvous).
Global rank 0, on the first node, is the one process that writes /out; the other nodes write nothing there.

The topology is read from the environment the schedulers set, first match wins:
- torchrun's own variables, as Kubeflow's PyTorchJob (with nprocPerNode) and hand-written launch scripts give
  them: PET_NNODES, PET_NODE_RANK, and PET_MASTER_ADDR / PET_MASTER_PORT or PET_RDZV_ENDPOINT=host:port;
- Slurm, one task per node (`srun --ntasks-per-node=1`): SLURM_NNODES and SLURM_NODEID, with MASTER_ADDR /
  MASTER_PORT set by the job script (a step with more tasks than nodes would start several executors per node);
- one process per pod (Kubeflow's PyTorchJob without nprocPerNode): WORLD_SIZE pods, this one RANK, at
  MASTER_ADDR / MASTER_PORT. Those variables then describe nodes, not torch processes: the executor starts its
  own ranks (`leave_rank_variables`).
MASTER_ADDR / MASTER_PORT complete the first two where their own address is missing. Not from `args_options`:
every node reads the same config.yaml, and a node's rank is its own. The nodes wait up to 10 minutes for each
other (torchrun's static rendezvous).
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Dict, Mapping, MutableMapping, Tuple

from ymir.errors import ConfigError

MAX_NODES = 4096
HOST = re.compile(r"[A-Za-z0-9_.:-]+")  # what torch's rendezvous accepts as a host (':' only in IPv6 addresses)
# What torchrun sets for each process it starts; in the executor's own first process they are the scheduler's
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "TORCHELASTIC_RUN_ID")


@dataclass(frozen=True)
class NodeGroup:
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = ""
    master_port: int = 0
    source: str = "one node"  # which variables said so, for the log and for errors
    problem: str = ""  # why the environment's topology cannot be used (raised by `check` once a task is known)

    @property
    def is_first(self) -> bool:
        """The node whose first process is global rank 0: the one that writes /out."""
        return self.node_rank == 0

    def check(self) -> None:
        if self.problem:
            raise ConfigError(self.problem)

    def torchrun_arguments(self) -> Tuple[str, ...]:
        """torchrun's static rendezvous for this node, every setting explicit (one node: the caller picks a free
        loopback port)."""
        return ("--rdzv_backend=static", f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}",
                f"--master_addr={self.master_addr}", f"--master_port={self.master_port}")

    def describe(self) -> str:
        host = f"[{self.master_addr}]" if ":" in self.master_addr else self.master_addr
        return f"node {self.node_rank} of {self.nnodes} ({self.source}), rendezvous at {host}:{self.master_port}"


ONE_NODE = NodeGroup()


def read_node_group(environ: Mapping[str, str]) -> NodeGroup:
    """The topology the environment describes (see the module's text); a bad one comes back with `problem` set,
    as the first node when its own rank cannot be read as another (that node alone reports to /out)."""
    if "TORCHELASTIC_RUN_ID" in environ or "LOCAL_RANK" in environ:
        return NodeGroup(problem="LOCAL_RANK is set (torchrun or a launch script sets it for each process): "
                                 "start.py starts torchrun itself; start it once per node, with PET_NNODES, "
                                 "PET_NODE_RANK, MASTER_ADDR and MASTER_PORT")
    for source, nodes_key, rank_key in (("PET_NNODES/PET_NODE_RANK", "PET_NNODES", "PET_NODE_RANK"),
                                        ("SLURM_NNODES/SLURM_NODEID", "SLURM_NNODES", "SLURM_NODEID"),
                                        ("WORLD_SIZE/RANK", "WORLD_SIZE", "RANK")):
        if nodes_key in environ:
            try:
                return _node_group(environ, source, nodes_key, rank_key)
            except ValueError as exc:
                rank = environ.get(rank_key, "0").strip()
                return NodeGroup(node_rank=int(rank) if rank.isascii() and rank.isdigit() else 0, source=source,
                                 problem=f"multi-node training ({source}): {exc}")
    return ONE_NODE


def _node_group(environ: Mapping[str, str], source: str, nodes_key: str, rank_key: str) -> NodeGroup:
    nnodes = _integer(environ[nodes_key], nodes_key, 1, MAX_NODES)
    if nodes_key == "SLURM_NNODES":
        tasks = environ.get("SLURM_STEP_NUM_TASKS") or environ.get("SLURM_NTASKS")
        if tasks is not None and tasks.strip() != str(nnodes):
            raise ValueError(f"{tasks.strip()} tasks on {nnodes} node(s) (SLURM_NTASKS): start one executor per node "
                             "(srun --ntasks-per-node=1); it starts one process per GPU itself")
    if nnodes == 1:
        return NodeGroup(source=source)
    if rank_key not in environ:
        raise ValueError(f"{nnodes} nodes, but this node's rank ({rank_key}) is not set")
    node_rank = _integer(environ[rank_key], rank_key, 0, nnodes - 1)
    addr, port = _rendezvous(environ)
    return NodeGroup(nnodes=nnodes, node_rank=node_rank, master_addr=addr, master_port=port, source=source)


def _rendezvous(environ: Mapping[str, str]) -> Tuple[str, int]:
    """The first node's (host, port), each from the first variable that gives it."""
    endpoint = environ.get("PET_RDZV_ENDPOINT", "").strip()
    if endpoint:
        found = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^\[\]:]+):(\d+)", endpoint)
        if not found:
            raise ValueError(f"PET_RDZV_ENDPOINT is {endpoint!r}, not host:port ([address]:port for IPv6)")
        addr, port = (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))
        return _host(addr, "PET_RDZV_ENDPOINT"), _integer(port, "PET_RDZV_ENDPOINT", 1, 65535)
    addr_key = next((k for k in ("PET_MASTER_ADDR", "MASTER_ADDR") if environ.get(k)), "MASTER_ADDR")
    port_key = next((k for k in ("PET_MASTER_PORT", "MASTER_PORT") if environ.get(k)), "MASTER_PORT")
    if not environ.get(port_key):
        raise ValueError("the first node's port (MASTER_PORT) is not set")
    return _host(environ.get(addr_key, ""), addr_key), _integer(environ[port_key], port_key, 1, 65535)


def _host(addr: str, key: str) -> str:
    addr = addr.strip()
    if not HOST.fullmatch(addr) or (":" in addr and not _is_ipv6(addr)):
        raise ValueError(f"the first node's address ({key}) is {addr!r}: a host name or an IP address")
    return addr


def _is_ipv6(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).version == 6
    except ValueError:
        return False


def _integer(text: str, key: str, low: int, high: int) -> int:
    """`text` (the value of variable `key`) as a whole number in low..high."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()):
        hint = " (an elastic min:max range is not supported: give the number of nodes)" if ":" in text else ""
        raise ValueError(f"{key} is {text!r}, not a whole number{hint}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{key} is {value}, outside {low}..{high}")
    return value


def leave_rank_variables(environ: MutableMapping[str, str]) -> Dict[str, str]:
    """The executor's first process is no torch rank: the scheduler's RANK / WORLD_SIZE (nodes, read into the
    NodeGroup) must not make it take itself for one. Returns what was removed."""
    return {key: environ.pop(key) for key in RANK_VARIABLES if key in environ}
