"""glibc malloc thresholds: a batch's CPU tensors reuse the memory the previous batch freed.

ALDD at 640 px / 80 classes allocates and frees maps of a few MB per image; with glibc's defaults each call
page-faults most of that memory in afresh, after keep_freed_memory() a repeated call faults none in."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
if {keep}:
    from utils.malloc import keep_freed_memory
    assert keep_freed_memory()
from ymir.mining.aldd import aldd_scores, class_weights
torch.manual_seed(0)
levels = [torch.randn(2, 3, g, g, 85) for g in (80, 40, 20)]
weights = class_weights([], 80)
for _ in range(3):
    aldd_scores(levels, (640, 640), weights)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    aldd_scores(levels, (640, 640), weights)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(keep: bool) -> int:
    """Minor page faults of 5 repeated ALDD calls in a fresh process."""
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(repo=str(REPO), keep=keep)], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is a Linux matter")
def test_keep_freed_memory_stops_page_faults_of_repeated_batches():
    default, kept = page_faults(False), page_faults(True)
    assert default > 5000  # 4 KB pages of the 6 MB maps faulted in afresh, call after call
    assert kept * 8 < default
