"""glibc malloc thresholds: a batch's CPU tensors reuse the memory the previous batch freed.

ALDD over a batch of 8 at 640 px / 80 classes, taken whole, allocates and frees maps of 49 MB: above the
largest threshold glibc's defaults ever serve from the heap (32 MB), so with them every call page-faults all of
that memory in afresh (deterministically; the executor's per-image chunks of 6 MB do so only while glibc's
dynamic threshold has not caught up). After keep_freed_memory() the heap serves them again."""
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, resource, sys, torch
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KB pages, where transparent huge pages are 'always'
if {keep}:
    from utils.malloc import keep_freed_memory
    assert keep_freed_memory()
from ymir.mining import aldd
from ymir.mining.aldd import aldd_scores, class_weights
aldd.NATIVE_CHUNK_ELEMENTS = 1 << 40  # the whole batch at once
torch.manual_seed(0)
levels = [torch.randn(8, 3, g, g, 85) for g in (80, 40, 20)]
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
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(keep=keep)], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is a Linux matter")
@pytest.mark.slow
def test_keep_freed_memory_stops_page_faults_of_repeated_batches():
    default, kept = page_faults(False), page_faults(True)
    assert default > 100_000  # 4 KB pages of the 49 MB maps faulted in afresh, call after call
    assert kept * 8 < default
