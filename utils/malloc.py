"""Keep freed memory in the process for the next tensor (glibc's malloc, Linux).

By default glibc serves every block above a (dynamic, at most 32 MB) threshold with a fresh mmap and gives it
back to the system on free, and it trims free memory at the top of the heap above twice that threshold. A
CPU tensor of that size, allocated again in the next batch, then page-faults all of its memory back in and
has it zeroed by the kernel: at 640 px / 80 classes, ALDD's intermediate maps cost 2-3x more that way than
their arithmetic (bench/aldd_cost.py). PyTorch's CPU performance guide recommends a caching allocator
(jemalloc, tcmalloc) for the same reason; setting glibc's own thresholds needs no extra library. GPU memory
has its own caching allocator and is not concerned.
"""
from __future__ import annotations

import ctypes
import logging
import sys

LOG = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h parameter numbers
MMAP_THRESHOLD = 64 << 20  # blocks up to 64 MB come from the heap and return to it when freed
TRIM_THRESHOLD = 512 << 20  # the heap keeps up to 512 MB of free memory at its top


def keep_freed_memory() -> bool:
    """Set glibc's thresholds for this process; False where the C library is not glibc (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        mallopt, version = libc.mallopt, libc.gnu_get_libc_version
    except (OSError, AttributeError):  # not glibc (musl has no gnu_get_libc_version)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    version.restype = ctypes.c_char_p
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not done:
        LOG.warning("glibc %s refused the malloc thresholds; freed CPU memory goes back to the system",
                    version().decode())
    return done
