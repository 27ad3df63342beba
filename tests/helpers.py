"""Shared test helpers: running start.py as YMIR would, fingerprinting /in, reading monitor.txt."""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from ymir.processes import alive

REPO = Path(__file__).resolve().parent.parent
START = REPO / "start.py"
# Outer limits that only a hang reaches. No test asserts how fast something happens (a loaded 2-core machine can be
# many times slower than an idle one): tests wait for the event itself and fail only when it never comes.
HANG_LIMIT = 1800  # seconds: a whole task, or a process that should end
EXIT_LIMIT = 300  # seconds: processes that were told to end, or have nothing left to do


def tree_fingerprint(root: Path) -> Dict[str, str]:
    """sha1 of every file (and the list of folders) under root: equal fingerprints mean byte-identical."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            result[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.isfile(path):  # a FIFO or device: its kind, never its (blocking) content
                result[os.path.relpath(path, root)] = f"special {oct(os.lstat(path).st_mode)}"
                continue
            with open(path, "rb") as f:
                result[os.path.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return result


def make_read_only(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)


@dataclass
class RunResult:
    returncode: int
    output: str
    monitor: str

    @property
    def monitor_fields(self):
        return self.monitor.splitlines()[0].split("\t")

    @property
    def last_lines(self):
        return self.output.strip().splitlines()[-2:]


def run_start(workdir: Path, timeout: float = HANG_LIMIT, extra_env: Optional[dict] = None) -> RunResult:
    """Run `start.py --in W/in --out W/out` in a fresh process, with /in read-only; /in must stay unchanged."""
    in_dir, out_dir = workdir / "in", workdir / "out"
    make_read_only(in_dir)
    before = tree_fingerprint(in_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    proc = subprocess.run([sys.executable, str(START), "--in", str(in_dir), "--out", str(out_dir)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, env=env,
                          cwd=str(workdir))
    assert tree_fingerprint(in_dir) == before, "the executor changed something under /in"
    left = processes_naming(str(in_dir))
    assert not left, f"processes of the task still running after it ended: {left}"
    monitor = (out_dir / "monitor.txt").read_text() if (out_dir / "monitor.txt").exists() else ""
    return RunResult(proc.returncode, proc.stdout, monitor)


def wait_until_gone(pids, limit: float = EXIT_LIMIT) -> List[int]:
    """The pids still alive once all have ended or `limit` seconds have passed, whichever comes first."""
    deadline = time.monotonic() + limit
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def processes_naming(text: str, grace: float = EXIT_LIMIT) -> List[str]:
    """Living processes whose command line contains `text` (the task's /in folder names every process of a task:
    ranks, torchrun, DataLoader workers), after up to `grace` seconds for them to finish exiting (returns as soon
    as none is left)."""
    deadline = time.monotonic() + grace
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline and alive(int(entry)):
                found.append(f"{entry}: {cmdline[:200]}")
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def edit_yaml(path: Path, **changes) -> None:
    data = yaml.safe_load(path.read_text()) or {}
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))


def load_trusted(path) -> object:
    """torch.load of a file the test wrote itself, classes and all (torch >= 1.13 defaults to weights only)."""
    import inspect

    import torch

    extra = {"weights_only": False} if "weights_only" in inspect.signature(torch.load).parameters else {}
    return torch.load(str(path), map_location="cpu", **extra)


def load_plain(path) -> object:
    """A file of plain types and tensors (test data the oracle wrote): torch's weights-only loader where torch has
    one (>= 1.13), else the executor's restricted unpickler, which refuses the same globals."""
    import inspect

    import torch

    from utils import restricted_pickle

    if "weights_only" in inspect.signature(torch.load).parameters:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    return torch.load(str(path), map_location="cpu", pickle_module=restricted_pickle)


class WritesAFile:
    """A pickle payload: unpickling it would create `path`, proof that code from the file ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@contextlib.contextmanager
def readable_tmp_dir(prefix: str):
    """A temporary folder another uid can reach (pytest's own tmp folders are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_media(media: Path, count: int, seed: int = 0) -> list:
    """Generated images stored as YMIR's media store holds them (by sha1), described for ymir_cmd's make-in:
    boxes as (class, x, y, w, h), a third of them in the val split."""
    import numpy as np

    from ymir.local.demo import draw_image

    rng = np.random.default_rng(seed)
    assets = []
    for i in range(count):
        demo = draw_image(rng, (96, 128))
        sha1 = hashlib.sha1(demo.jpeg).hexdigest()
        (media / sha1[-2:]).mkdir(parents=True, exist_ok=True)
        (media / sha1[-2:] / sha1).write_bytes(demo.jpeg)
        boxes = [[c, x1, y1, x2 - x1 + 1, y2 - y1 + 1] for c, x1, y1, x2, y2 in demo.boxes]
        assets.append({"sha1": sha1, "ext": "jpg", "width": 128, "height": 96, "boxes": boxes,
                       "split": "train" if i % 3 else "val"})
    return assets


YMIR_CMD_VERSIONS = ("2.0.0", "2.3.0")
PROBE = REPO / "tests" / "contract" / "ymir_cmd_probe.py"


def ymir_cmd(version: str, *args) -> dict:
    """Run YMIR's own code (ymir-cmd `version`, isolated venv made by tools/bootstrap.sh) through the probe."""
    python = REPO / ".venvs" / f"ymir-cmd-{version}" / "bin" / "python"
    assert python.exists(), f"{python} is missing: run tools/bootstrap.sh"
    proc = subprocess.run([str(python), str(PROBE), *map(str, args)], capture_output=True,
                          text=True, timeout=HANG_LIMIT,
                          env={"PATH": os.environ.get("PATH", ""), "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


ORACLE_TOOL = REPO / "tests" / "oracle" / "oracle_tool.py"
_oracle_process = None


def oracle(*args) -> dict:
    """Ask the original YOLOv5 (test-only venv made by tools/bootstrap.sh; tests/oracle/oracle_tool.py).

    One oracle process serves the whole test session, so its heavy imports are paid once.
    """
    global _oracle_process
    if _oracle_process is None or _oracle_process.poll() is not None:
        python = REPO / ".venvs" / "oracle" / "bin" / "python"
        assert python.exists(), f"{python} is missing: run tools/bootstrap.sh"
        _oracle_process = subprocess.Popen([str(python), str(ORACLE_TOOL), "serve"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, cwd=str(REPO / "tests"))
        atexit.register(_oracle_process.kill)
    _oracle_process.stdin.write(json.dumps([str(a) for a in args]) + "\n")
    _oracle_process.stdin.flush()
    line = _oracle_process.stdout.readline()
    assert line, "the oracle process died"
    result = json.loads(line)
    assert result.pop("ok"), result["trace"]
    return result
