"""Executor error codes (YMIR executor SDK convention) and the exceptions that carry them."""
from __future__ import annotations

# Code 0 tells YMIR (2.3+) to fall back to its generic "container error".
UNKNOWN_ERROR = 0
CONFIG_ERROR = 300001
DATASET_ERROR = 300002
IMAGE_FORMAT_ERROR = 300003
MODEL_ERROR = 300004
CUDA_ERROR = 300101
NO_GPU_ERROR = 300102
OUT_OF_MEMORY_ERROR = 300103
NAN_LOSS_ERROR = 300201


class ExecutorError(Exception):
    """A failure the executor understands: it has a YMIR code and a one-line message."""

    code = UNKNOWN_ERROR

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(ExecutorError):
    code = CONFIG_ERROR


class DatasetError(ExecutorError):
    code = DATASET_ERROR


class ImageFormatError(ExecutorError):
    code = IMAGE_FORMAT_ERROR


class ModelError(ExecutorError):
    code = MODEL_ERROR


class CudaError(ExecutorError):
    code = CUDA_ERROR


class NoGpuError(ExecutorError):
    code = NO_GPU_ERROR


class OutOfMemoryError(ExecutorError):
    code = OUT_OF_MEMORY_ERROR


class NanLossError(ExecutorError):
    code = NAN_LOSS_ERROR


def classify(exc: BaseException) -> tuple[int, str]:
    """Map any exception to (code, one-line message)."""
    if isinstance(exc, ExecutorError):
        return exc.code, one_line(exc.message)
    text = one_line(f"{type(exc).__name__}: {exc}")
    name = type(exc).__name__
    lowered = str(exc).lower()
    if name == "OutOfMemoryError" or "out of memory" in lowered:
        return OUT_OF_MEMORY_ERROR, text
    if "no cuda gpus are available" in lowered or "found no nvidia driver" in lowered:
        return NO_GPU_ERROR, text
    if "cuda" in lowered or "nccl" in lowered or "cudnn" in lowered:
        return CUDA_ERROR, text
    return UNKNOWN_ERROR, text


def one_line(text: str, limit: int = 500) -> str:
    """Collapse whitespace (tabs and newlines break monitor.txt) and cap the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
