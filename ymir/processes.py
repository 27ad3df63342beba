"""Ending every child process the executor started (DataLoader workers, torchrun ranks)."""
from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Dict, List


def _parents() -> Dict[int, int]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields resume after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and fields[0] != "Z":
            table[int(entry)] = int(fields[1])
    return table


def descendants(pid: int) -> List[int]:
    """Living descendants of `pid`, on Linux (empty where /proc is missing)."""
    if not os.path.isdir("/proc"):
        return []
    parents = _parents()
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        children = [child for child, parent in parents.items() if parent == current]
        found.extend(children)
        frontier.extend(children)
    return found


def terminate_descendants(grace: float = 5.0) -> None:
    """SIGTERM every descendant of this process, then SIGKILL whatever is left after `grace` seconds."""
    pids = descendants(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline:
            pids = descendants(os.getpid())
            if not pids:
                return
            time.sleep(0.05)
