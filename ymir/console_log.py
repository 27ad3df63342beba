"""Outside YMIR (`start.py --out DIR`), a copy of the console in DIR/ymir-executor-out.log.

In YMIR the platform writes that file from the container's output; run by hand, nothing would. The copy is
taken at the file-descriptor level, so it holds exactly what the console shows: log lines, warnings, tracebacks
and the output of every process the task starts (torchrun and its ranks, data-loading workers).
"""
from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
from pathlib import Path
from typing import BinaryIO, List, Tuple

JOIN_SECONDS = 5.0
PARTIAL_LINE_SECONDS = 1.0
MAX_PENDING_BYTES = 65536


class ConsoleCopy:
    """While active, whatever is written to stdout and stderr (fds 1 and 2) still reaches them and is appended
    to `path` as well."""

    def __init__(self, path: Path):
        self.path = path
        self._file: BinaryIO = open(path, "ab", buffering=0)  # noqa: SIM115 (closed by __exit__)
        self._lock = threading.Lock()
        self._streams: List[Tuple[int, int, threading.Thread]] = []  # fd, its saved original, its pump

    def __enter__(self) -> ConsoleCopy:
        """Raises OSError (no fd or pipe to spare) with the console left as it was."""
        try:
            for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
                stream.flush()
                original = os.dup(fd)
                read_end, write_end = os.pipe()
                os.dup2(write_end, fd)
                os.close(write_end)
                pump = threading.Thread(target=self._pump, args=(read_end, original), daemon=True,
                                        name=f"console-copy-{fd}")
                pump.start()
                self._streams.append((fd, original, pump))
        except OSError:
            self.__exit__(None, None, None)
            raise
        return self

    def _pump(self, read_end: int, original: int) -> None:
        """Forwards whole lines, so that stdout and stderr (two pumps) never cut into each other's lines, however
        the writer split them (an unbuffered print writes its text and its newline apart); a partial line is
        forwarded once the pipe has been quiet for PARTIAL_LINE_SECONDS (a prompt, a progress bar)."""
        pending = bytearray()
        try:
            while True:
                ready, _, _ = select.select([read_end], [], [], PARTIAL_LINE_SECONDS if pending else None)
                if not ready:
                    self._emit(original, bytes(pending))
                    pending.clear()
                    continue
                chunk = os.read(read_end, 65536)
                if not chunk:
                    self._emit(original, bytes(pending))
                    return
                pending += chunk
                # up to the last line end ('\r' too: a progress bar redraws its line), or all of a long line
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r")) + 1 or \
                    (len(pending) if len(pending) >= MAX_PENDING_BYTES else 0)
                if cut:
                    self._emit(original, bytes(pending[:cut]))
                    del pending[:cut]
        finally:
            os.close(read_end)

    def _emit(self, original: int, data: bytes) -> None:
        if not data:
            return
        with self._lock:  # one line at a time on the console and in the file
            _write_all(original, data)
            with contextlib.suppress(OSError, ValueError):  # disk full or file closed: the console still gets it
                self._file.write(data)

    def __exit__(self, *exc_info) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, original, _ in self._streams:
            os.dup2(original, fd)  # the pipe's last writer (ours) is gone: its pump reads to the end and stops
        for _, original, pump in self._streams:
            pump.join(JOIN_SECONDS)  # a process that outlived the task would hold the pipe open: do not wait
            if not pump.is_alive():  # a pump still running keeps its fd (closing it could send its output to
                os.close(original)   # whatever file takes that number next); the process ends soon anyway
        with self._lock:
            self._file.close()  # a pump still running writes to the console only from here on


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:  # the console went away (closed terminal): keep copying to the file
            return
        view = view[written:]
