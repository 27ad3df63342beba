"""Owning `/out` for one run: a lock that a second run on the same folder meets at once, and the results of an
earlier run removed before this one writes, so that the platform never reads a stale file after a failure."""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import List

import yaml

from ymir.errors import ConfigError
from ymir.paths import OutputPaths

LOG = logging.getLogger(__name__)


class OutFolderBusy(Exception):
    """Another run holds the output folder."""


class OutFolderLock:
    """An exclusive flock on the output folder itself (no file is added to it), held until close or exit; the
    kernel releases it when the process dies, however it dies. Processes this run starts inherit nothing."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise OutFolderBusy(f"another ymir-yolov5 run is writing to {self.folder}: give each run its own "
                                "output folder") from None

    def close(self) -> None:
        os.close(self.fd)


def stale_results(output: OutputPaths) -> List[Path]:
    """What an earlier run left that the platform reads: result.tsv, infer-result.json, models/result.yaml and the
    stage folders that file lists."""
    found = [p for p in (output.mining_result_file, output.infer_result_file, output.mining_report_file,
                           output.mining_report_picture) if p.exists()]
    if output.training_result_file.exists():
        found.append(output.training_result_file)
        try:
            stages = (yaml.safe_load(output.training_result_file.read_text()) or {}).get("model_stages") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            stages = {}
        models_dir = output.models_dir.resolve()
        for name in stages if isinstance(stages, dict) else ():
            folder = output.models_dir / str(name)
            # a plain folder name inside models/ only: never '.', '..', a path or a link leading elsewhere
            if str(name) not in ("", ".", "..") and "/" not in str(name) and not folder.is_symlink() \
                    and folder.is_dir() and folder.resolve().parent == models_dir:
                found.append(folder)
    return found


def remove_stale_results(output: OutputPaths) -> None:
    stale = stale_results(output)
    if not stale:
        return
    LOG.warning("removing the results of an earlier run in %s before this one writes: %s", output.root,
                ", ".join(str(p.relative_to(output.root)) for p in stale))
    for path in stale:
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        except OSError as exc:
            raise ConfigError(f"cannot remove {path}, left by an earlier run ({exc.strerror}): give this run an "
                              "empty output folder") from None
