"""Mapping of the container paths `/in` and `/out` onto host folders, for runs outside Docker."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OutputPaths:
    """The platform reads these fixed names under /out, whatever env.yaml says."""

    root: Path
    models_dir: Path
    training_result_file: Path
    mining_result_file: Path
    infer_result_file: Path
    mining_report_file: Path  # ours (YMIR ignores other files in /out): ymir.mining.report
    mining_report_picture: Path
    monitor_file: Path
    tensorboard_dir: Path
    executor_log_file: Path  # written by the platform from the console; by ymir.console_log when run by hand

    @classmethod
    def under(cls, root: Path) -> OutputPaths:
        return cls(root=root, models_dir=root / "models", training_result_file=root / "models" / "result.yaml",
                   mining_result_file=root / "result.tsv", infer_result_file=root / "infer-result.json",
                   mining_report_file=root / "mining-report.json", mining_report_picture=root / "mining-report.png",
                   monitor_file=root / "monitor.txt", tensorboard_dir=root / "tensorboard",
                   executor_log_file=root / "ymir-executor-out.log")


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
        return OutputPaths.under(self.out_root)
