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


def _coded(name: str, code: int) -> type:
    """An ExecutorError subclass that carries `code`."""
    return type(name, (ExecutorError,), {"code": code, "__module__": __name__})


ConfigError = _coded("ConfigError", CONFIG_ERROR)
DatasetError = _coded("DatasetError", DATASET_ERROR)
ImageFormatError = _coded("ImageFormatError", IMAGE_FORMAT_ERROR)
ModelError = _coded("ModelError", MODEL_ERROR)
CudaError = _coded("CudaError", CUDA_ERROR)
NoGpuError = _coded("NoGpuError", NO_GPU_ERROR)
OutOfMemoryError = _coded("OutOfMemoryError", OUT_OF_MEMORY_ERROR)
NanLossError = _coded("NanLossError", NAN_LOSS_ERROR)


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
