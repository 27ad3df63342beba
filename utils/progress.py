"""Progress lines a person can watch: at most one per interval, and only every so many steps."""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

LOG = logging.getLogger(__name__)
MIN_SECONDS = 10.0
MIN_STEPS = 5


def duration(seconds: float) -> str:
    """12 s, 3m05s, 2h07m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressLine:
    """Logs `what done/total, images/s, ETA[ (task: T left)][, detail]` when at least `min_seconds` and `min_steps`
    steps have passed since the last line (whichever is rarer), never for the last step (the caller's summary
    follows)."""

    def __init__(self, what: str, total: int, min_seconds: float = MIN_SECONDS, min_steps: int = MIN_STEPS,
                 clock: Callable[[], float] = time.monotonic, log: Callable[..., None] = LOG.info):
        self.what, self.total = what, total
        self.min_seconds, self.min_steps = min_seconds, min_steps
        self.clock, self.log = clock, log
        self.started = self.last_time = clock()
        self.last_step = 0
        self.images = 0

    def update(self, done: int, images: int = 0, detail: Optional[Callable[[], str]] = None,
               eta_total: Optional[Callable[[], float]] = None) -> bool:
        """`done` steps of `total` so far, `images` more images since the last call; `detail` and `eta_total`
        (the whole run's) are asked for only when a line is due. Returns whether it logged."""
        self.images += images
        now = self.clock()
        if done >= self.total or now - self.last_time < self.min_seconds or done - self.last_step < self.min_steps:
            return False
        elapsed = now - self.started
        eta = elapsed / max(done, 1) * (self.total - done)
        rate = self.images / max(elapsed, 1e-9)
        text = f"{self.what} {done}/{self.total}, {rate:.1f} images/s, ETA {duration(eta)}"
        if eta_total is not None:
            text += f" (task: {duration(eta_total())} left)"
        self.log("%s%s", text, f", {detail()}" if detail is not None else "")
        self.last_time, self.last_step = now, done
        return True
