"""Which machines a task spans: one (YMIR's own launch), or several nodes started by a cluster scheduler.

Every node runs the image's start.py once, with its own /in (the same task) and /out; each starts torchrun for
its own GPUs (config `gpu_id`), and the nodes meet at the first node's address (torchrun's static rendezvous).
Global rank 0, on the first node, is the one process that writes /out; the other nodes write nothing there.

The topology is read from the environment the schedulers set, first match wins:
- torchrun's own variables, as Kubeflow's PyTorchJob (with nprocPerNode) and hand-written launch scripts give
  them: PET_NNODES, PET_NODE_RANK, and PET_MASTER_ADDR / PET_MASTER_PORT or PET_RDZV_ENDPOINT=host:port;
- Slurm: SLURM_NNODES and SLURM_NODEID, with MASTER_ADDR / MASTER_PORT set by the job script;
- one process per pod (Kubeflow's PyTorchJob without nprocPerNode): WORLD_SIZE pods, this one RANK, at
  MASTER_ADDR / MASTER_PORT. Those variables then describe nodes, not torch processes: the executor starts its
  own ranks (`leave_rank_variables`).
MASTER_ADDR / MASTER_PORT complete the first two where their own address is missing. Not from `args_options`:
every node reads the same config.yaml, and a node's rank is its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, MutableMapping, Optional, Tuple

from ymir.errors import ConfigError

MAX_NODES = 4096
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
        """torchrun's rendezvous for this node (one node: the caller picks a free loopback port)."""
        return (f"--nnodes={self.nnodes}", f"--node_rank={self.node_rank}", f"--master_addr={self.master_addr}",
                f"--master_port={self.master_port}")

    def describe(self) -> str:
        return f"node {self.node_rank} of {self.nnodes} ({self.source}), rendezvous at " \
               f"{self.master_addr}:{self.master_port}"


ONE_NODE = NodeGroup()


def read_node_group(environ: Mapping[str, str]) -> NodeGroup:
    """The topology the environment describes (see the module's text); a bad one comes back with `problem` set."""
    if "TORCHELASTIC_RUN_ID" in environ or "LOCAL_RANK" in environ:
        return NodeGroup(problem="start.py was started by torchrun (LOCAL_RANK is set): it starts torchrun itself; "
                                 "start it once per node, with PET_NNODES, PET_NODE_RANK, MASTER_ADDR and MASTER_PORT")
    for source, nodes_key, rank_key in (("PET_NNODES/PET_NODE_RANK", "PET_NNODES", "PET_NODE_RANK"),
                                        ("SLURM_NNODES/SLURM_NODEID", "SLURM_NNODES", "SLURM_NODEID"),
                                        ("WORLD_SIZE/RANK", "WORLD_SIZE", "RANK")):
        if nodes_key in environ:
            try:
                return _node_group(environ, source, environ[nodes_key], environ.get(rank_key))
            except ValueError as exc:
                return NodeGroup(source=source, problem=f"multi-node training ({source}): {exc}")
    return ONE_NODE


def _node_group(environ: Mapping[str, str], source: str, nnodes_text: str, rank_text: Optional[str]) -> NodeGroup:
    nnodes = _integer(nnodes_text, "the number of nodes", 1, MAX_NODES)
    if nnodes == 1:
        return NodeGroup(source=source)
    if rank_text is None:
        raise ValueError(f"{nnodes} nodes, but this node's rank is not set")
    node_rank = _integer(rank_text, "this node's rank", 0, nnodes - 1)
    addr, port = _rendezvous(environ)
    return NodeGroup(nnodes=nnodes, node_rank=node_rank, master_addr=addr, master_port=port, source=source)


def _rendezvous(environ: Mapping[str, str]) -> Tuple[str, int]:
    endpoint = environ.get("PET_RDZV_ENDPOINT", "")
    if endpoint:
        addr, colon, port_text = endpoint.rpartition(":")
        if not colon:
            raise ValueError(f"PET_RDZV_ENDPOINT {endpoint!r} is not host:port")
    else:
        addr = environ.get("PET_MASTER_ADDR") or environ.get("MASTER_ADDR", "")
        port_text = environ.get("PET_MASTER_PORT") or environ.get("MASTER_PORT", "")
    addr = addr.strip("[]")  # an IPv6 endpoint's brackets
    if not addr or any(c.isspace() for c in addr):
        raise ValueError(f"the first node's address (MASTER_ADDR) is {addr!r}")
    if not port_text:
        raise ValueError("the first node's port (MASTER_PORT) is not set")
    return addr, _integer(port_text, "the first node's port (MASTER_PORT)", 1, 65535)


def _integer(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{what} is {text!r}, not a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{what} is {value}, outside {low}..{high}")
    return value


def leave_rank_variables(environ: MutableMapping[str, str]) -> Dict[str, str]:
    """The executor's first process is no torch rank: the scheduler's RANK / WORLD_SIZE (nodes, read into the
    NodeGroup) must not make it take itself for one. Returns what was removed."""
    return {key: environ.pop(key) for key in RANK_VARIABLES if key in environ}
