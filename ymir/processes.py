"""Ending every child process the executor started (DataLoader workers, torchrun ranks), and ranks that end
themselves when the process that started them is gone."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Dict, List

SUPERVISOR_ENV = "YMIR_SUPERVISOR_PID"  # set for torchrun's ranks: the executor process that launched them


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


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def terminate(pids: List[int], grace: float = 5.0) -> None:
    """SIGTERM `pids`, then SIGKILL whichever is still alive after `grace` seconds. The list is taken before any
    of them dies, so a process whose parent dies first (and is re-parented to init) is still ended."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline:
            pids = [pid for pid in pids if alive(pid)]
            if not pids:
                return
            time.sleep(0.05)


def terminate_tree(root: int, grace: float = 5.0) -> None:
    """End `root` and all of its descendants (listed while they are still linked to it)."""
    terminate([root, *descendants(root)], grace)


def terminate_descendants(grace: float = 5.0) -> None:
    """SIGTERM every descendant of this process, then SIGKILL whatever is left after `grace` seconds."""
    terminate(descendants(os.getpid()), grace)


def stop_when_orphaned(interval: float = 1.0) -> threading.Thread:
    """In a rank: SIGTERM this process (the task then fails as if stopped) once its parent (torchrun) or the
    supervising executor process is gone, so that no rank outlives the task that started it."""
    parent = os.getppid()
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0") or 0)

    def watch():
        while os.getppid() == parent and (not supervisor or alive(supervisor)):
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10 * interval)  # the main thread may be blocked in a collective with a dead peer
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="stop-when-orphaned", daemon=True)
    thread.start()
    return thread
