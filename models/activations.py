"""Activation lookup by name: any `torch.nn` activation class, case-insensitive."""
from __future__ import annotations

import torch.nn as nn

DEFAULT_ACTIVATION = "SiLU"

# Activation modules that torch.nn defines; matched case-insensitively ("relu", "ReLU", "silu" ...).
_ACTIVATIONS = {
    name.lower(): getattr(nn, name)
    for name in (
        "CELU", "ELU", "GELU", "GLU", "Hardshrink", "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU",
        "LogSigmoid", "Mish", "PReLU", "ReLU", "ReLU6", "RReLU", "SELU", "SiLU", "Sigmoid", "Softplus",
        "Softshrink", "Softsign", "Tanh", "Tanhshrink",
    )
    if hasattr(nn, name)
}


def activation_names() -> list[str]:
    return sorted(cls.__name__ for cls in _ACTIVATIONS.values())


def resolve_activation(name: str) -> type[nn.Module]:
    """Return the torch.nn class for `name`; raises KeyError for an unknown name."""
    return _ACTIVATIONS[str(name).strip().lower()]
