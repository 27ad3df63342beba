"""Progress lines: at a bounded rate (every 10 s and every 5 steps, whichever is rarer), with rate and ETA."""
from utils.progress import ProgressLine, duration


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_line_needs_both_the_interval_and_the_steps():
    clock, lines = Clock(), []
    line = ProgressLine("images", 100, min_seconds=10, min_steps=5, clock=clock, log=lambda f, *a: lines.append(f % a))
    for step in range(1, 101):  # one step per second, 4 images each
        clock.now += 1.0
        line.update(step, 4, detail=lambda: "loss 0.5", eta_total=lambda: 3700)
    # every 10 s (the rarer condition here), never for the last step
    assert len(lines) == 9
    assert lines[0] == "images 10/100, 4.0 images/s, ETA 1m30s (task: 1h01m left), loss 0.5"
    clock2, lines2 = Clock(), []
    fast = ProgressLine("batch", 1000, min_seconds=10, min_steps=200, clock=clock2,
                        log=lambda f, *a: lines2.append(f % a))
    for step in range(1, 1001):  # eight steps per second: the step count is the rarer condition
        clock2.now += 0.125
        fast.update(step, 1)
    assert lines2 == [f"batch {n}/1000, 8.0 images/s, ETA {eta}"
                      for n, eta in ((200, "1m40s"), (400, "1m15s"), (600, "50 s"), (800, "25 s"))]


def test_details_are_computed_only_for_lines_that_are_logged():
    clock, asked = Clock(), []
    line = ProgressLine("batch", 10, min_seconds=10, min_steps=1, clock=clock, log=lambda *a: None)
    for step in range(1, 11):
        clock.now += 3
        line.update(step, 1, detail=lambda: asked.append(1) or "x")
    assert len(asked) == 2  # at 12 s and 24 s


def test_duration():
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600, 7620)] == ["0 s", "59 s", "1m01s", "59m59s", "1h00m",
                                                                        "2h07m"]
