"""The GPU check's report: each step's record (status, seconds, figures), rewritten as gpu-check.md and
gpu-check.json after every step, so that a run cut short still leaves what it measured."""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List


class CheckFailed(Exception):
    """A measured value is outside what the step requires."""


@dataclass
class StepRecord:
    name: str
    measures: str
    status: str = "not run"
    seconds: float = 0.0
    figures: Dict[str, object] = field(default_factory=dict)


class Report:
    """The steps' records, rewritten after each step (a run cut short still leaves what it measured)."""

    def __init__(self, out: Path, cuda: bool):
        self.out, self.cuda = out, cuda
        self.header: Dict[str, object] = {"dry_run": not cuda, "started": time.strftime("%F %T")}
        self.steps: List[StepRecord] = []

    def run(self, name: str, measures: str, fn: Callable[[Dict[str, object]], None], needs_cuda: bool = False):
        record = StepRecord(name, measures)
        self.steps.append(record)
        print(f"== {name}: {measures}", flush=True)
        started = time.perf_counter()
        if needs_cuda and not self.cuda:
            record.status = "skipped: needs CUDA (dry run)"
        else:
            try:
                fn(record.figures)
                record.status = "ok"
            except CheckFailed as exc:
                record.status = f"FAILED: {exc}"
            except Exception as exc:  # a step's bug must not cost the other steps' figures
                traceback.print_exc()
                record.status = f"ERROR: {type(exc).__name__}: {exc}"
        record.seconds = round(time.perf_counter() - started, 1)
        print(f"   {record.status} ({record.seconds} s) {json.dumps(record.figures, default=str)}", flush=True)
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = dict(self.header, steps=[asdict(s) for s in self.steps])
        (self.out / "gpu-check.json").write_text(json.dumps(data, indent=1, default=str))
        lines = ["# GPU check", ""] + [f"- {k}: {v}" for k, v in self.header.items()] + [""]
        lines += ["| step | status | seconds | measures |", "|---|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds} | {s.measures} |" for s in self.steps]
        for s in self.steps:
            lines += ["", f"## {s.name}", ""] + [f"- {k}: {v}" for k, v in s.figures.items()]
        (self.out / "gpu-check.md").write_text("\n".join(lines) + "\n")

    @property
    def failed(self) -> List[str]:
        return [s.name for s in self.steps if not (s.status == "ok" or s.status.startswith("skipped"))]
