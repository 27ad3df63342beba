"""How big each step of the GPU check runs: the real sizes on a GPU, toy sizes in the dry run on the CPU."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from models.architecture import MODEL_NAMES

CARD_GIB = (16, 24, 40, 80)  # the cards whose largest batch the memory step advises


@dataclass(frozen=True)
class Scale:
    """How big each step runs: the real sizes on a GPU, toy sizes in the dry run."""

    device: str
    train_images: int = 256
    epochs: int = 10
    task_img: int = 256
    candidates: int = 256
    speed_model: str = "yolov5s"
    speed_img: int = 640
    train_batch: int = 64
    infer_batches: Tuple[int, ...] = (1, 32)
    amp_steps: int = 30
    seconds: float = 3.0
    memory_models: Tuple[str, ...] = MODEL_NAMES
    step_models: Tuple[str, ...] = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")  # step beside loader
    memory_batches: Tuple[int, ...] = (8, 16)
    workers: int = 8
    task_timeout: int = 300
    cost_algorithms: Tuple[str, ...] = ("random", "entropy", "aldd", "cald", "diverse")


GPU = Scale("cuda")
DRY_RUN = Scale("cpu", train_images=16, epochs=1, task_img=64, candidates=8, speed_model="yolov5n", speed_img=64,
                train_batch=2, infer_batches=(1, 2), amp_steps=3, seconds=0.2, memory_models=("yolov5n",),
                step_models=("yolov5n",),
                memory_batches=(1, 2), workers=1, task_timeout=300, cost_algorithms=("cald",))
