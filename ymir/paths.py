"""Mapping of the container paths `/in` and `/out` onto host folders, for runs outside Docker."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputPaths:
    """The platform reads these fixed names under /out, whatever env.yaml says."""

    root: Path

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def training_result_file(self) -> Path:
        return self.models_dir / "result.yaml"

    @property
    def mining_result_file(self) -> Path:
        return self.root / "result.tsv"

    @property
    def infer_result_file(self) -> Path:
        return self.root / "infer-result.json"

    @property
    def monitor_file(self) -> Path:
        return self.root / "monitor.txt"

    @property
    def tensorboard_dir(self) -> Path:
        return self.root / "tensorboard"

    @property
    def executor_log_file(self) -> Path:
        """Written by the platform from the container's console; by ymir.console_log when run by hand."""
        return self.root / "ymir-executor-out.log"


class PathMapper:
    """Rewrites paths that start with `/in` or `/out` (as written by YMIR) to other roots.

    Without roots it is the identity, which is what runs inside the container.
    """

    def __init__(self, in_dir: str | Path | None = None, out_dir: str | Path | None = None):
        self.in_root = Path(in_dir).resolve() if in_dir else Path("/in")
        self.out_root = Path(out_dir).resolve() if out_dir else Path("/out")

    def __call__(self, path: str | Path) -> Path:
        text = str(path)
        for prefix, root in (("/in", self.in_root), ("/out", self.out_root)):
            if text == prefix:
                return root
            if text.startswith(prefix + "/"):
                return root / text[len(prefix) + 1:]
        return Path(text)

    @property
    def env_file(self) -> Path:
        return self.in_root / "env.yaml"

    @property
    def config_file(self) -> Path:
        return self.in_root / "config.yaml"

    @property
    def output(self) -> OutputPaths:
        return OutputPaths(self.out_root)
