"""Everything a task needs, read and validated once at start."""
from __future__ import annotations

from dataclasses import dataclass

from ymir.config import ExecutorConfig
from ymir.env import EnvConfig
from ymir.monitor import Monitor
from ymir.nodes import ONE_NODE, NodeGroup
from ymir.paths import PathMapper


@dataclass
class TaskContext:
    env: EnvConfig
    config: ExecutorConfig
    mapper: PathMapper
    monitor: Monitor
    nodes: NodeGroup = ONE_NODE  # the machines the task spans (ymir.nodes)
