"""`/out/monitor.txt`: the progress file the platform polls.

One line `task_id TAB timestamp TAB percent TAB state [TAB code TAB message]`, rewritten atomically. While
running the state is 2 and the percent never goes down, with code 0 and a note once there is one to give (the
platform shows the message; it overwrites the file when the task ends); on failure the state is 4, the percent 1,
then the error code and a one-line message, then the trace lines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ymir.atomic import write_text_atomic
from ymir.errors import one_line

STATE_RUNNING = 2
STATE_ERROR = 4
MAX_TRACE_LINES = 99
MAX_TRACE_LINE_LENGTH = 1000


def safe_field(text: str) -> str:
    """A value that cannot break the line's fields: TABs, line breaks and other control characters become
    spaces."""
    return "".join(" " if ord(c) < 32 or c in "\x7f\u2028\u2029\x85" else c for c in str(text))


@dataclass(frozen=True)
class MonitorLine:
    """The first line of monitor.txt, as another process of the task wrote it."""

    state: int
    code: int = 0
    message: str = ""


def read_monitor_line(path: Path) -> Optional[MonitorLine]:
    """None where the file is missing or its first line is not one this module writes."""
    try:
        fields = Path(path).read_text(encoding="utf-8").splitlines()[0].split("\t")
        return MonitorLine(int(fields[3]), int(fields[4]) if len(fields) > 4 else 0,
                           fields[5] if len(fields) > 5 else "")
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return None


class Monitor:
    def __init__(self, path: Path, task_id: str, min_interval: float = 0.5, enabled: bool = True):
        self.path = Path(path)
        self.task_id = task_id
        self.min_interval = min_interval
        self.enabled = enabled  # only one process (rank 0) writes
        self.percent = 0.0
        self._last_write = 0.0
        self._last_stamp = ""
        self.message = ""  # a running task's note, kept in every later progress line

    @property
    def task_id(self) -> str:
        return self._task_id

    @task_id.setter
    def task_id(self, value: str) -> None:
        self._task_id = safe_field(value)

    def _stamp(self) -> str:
        stamp = f"{time.time():.6f}"
        if stamp == self._last_stamp:  # the platform only reacts to a changed timestamp
            stamp = f"{float(stamp) + 1e-6:.6f}"
        self._last_stamp = stamp
        return stamp

    def progress(self, percent: float, force: bool = False) -> None:
        """Report progress in [0, 1]; values below the last one are raised to it. Writes are throttled."""
        self.percent = max(self.percent, min(1.0, max(0.0, float(percent))))
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_write < self.min_interval):
            return
        self._last_write = now
        note = f"\t0\t{one_line(self.message)}" if one_line(self.message) else ""
        self._write(f"{self.task_id}\t{self._stamp()}\t{self.percent:.4f}\t{STATE_RUNNING}{note}\n")

    def note(self, message: str) -> None:
        """Something a running task wants the user to see (e.g. that mining cannot rank): written at once as the
        line's message, with code 0, and kept in every later progress line."""
        self.message = message
        self.progress(self.percent, force=True)

    def span(self, start: float, end: float) -> ProgressSpan:
        return ProgressSpan(self, start, end)

    def error(self, code: int, message: str, trace: Iterable[str] = ()) -> None:
        if not self.enabled:
            return
        lines = [f"{self.task_id}\t{self._stamp()}\t1.0000\t{STATE_ERROR}\t{int(code)}\t{one_line(message)}"]
        lines += [line.rstrip("\n")[:MAX_TRACE_LINE_LENGTH] for line in trace][-MAX_TRACE_LINES:]
        self._write("\n".join(lines) + "\n")

    def _write(self, text: str) -> None:
        """Atomically; where that is impossible (a full disk has no room for the new file), the state line alone
        rewritten in place, in the room the file already holds."""
        try:
            write_text_atomic(self.path, text)
        except OSError:
            with open(self.path, "r+" if self.path.exists() else "w", encoding="utf-8") as f:
                f.write(text.split("\n", 1)[0] + "\n")
                f.truncate()


class ProgressSpan:
    """Maps a phase's own progress in [0, 1] onto [start, end] of the task (mining 0-0.5, infer 0.5-1)."""

    def __init__(self, monitor: Monitor, start: float, end: float):
        self.monitor, self.start, self.end = monitor, start, end

    def __call__(self, fraction: float, force: bool = False) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self.monitor.progress(self.start + (self.end - self.start) * fraction, force=force)

    def span(self, start: float, end: float) -> ProgressSpan:
        width = self.end - self.start
        return ProgressSpan(self.monitor, self.start + width * start, self.start + width * end)
