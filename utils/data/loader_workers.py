"""What every data loader's worker process sets up when it starts.

OpenCV runs its own thread pool (one thread per core by default) inside each process; a worker that decodes,
warps and converts images with it competes with the other workers and with the main process's torch threads for
the same cores (8 workers on a 16-core machine would start 128 OpenCV threads). A worker is the unit of
parallelism here, so each runs OpenCV on its one thread, as torch runs its own ops in a worker on one thread (the
original YOLOv5 turns OpenCV's threads off for the whole process). The main process keeps them: with no workers it
does the loading itself. Where cores sit idle beside the workers, more workers (`num_workers_per_gpu`) use them.
"""
from __future__ import annotations

import cv2


def init_loader_worker(worker_id: int) -> None:
    """DataLoader's worker_init_fn: OpenCV on this worker's one thread."""
    del worker_id
    cv2.setNumThreads(0)  # 0: no thread pool at all, every call runs on the calling thread
