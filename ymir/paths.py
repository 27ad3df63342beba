"""Mapping of the container paths `/in` and `/out` onto host folders, for runs outside Docker."""
from __future__ import annotations

from pathlib import Path


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
    def monitor_file(self) -> Path:
        return self.out_root / "monitor.txt"
