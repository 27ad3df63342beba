"""YOLOv5 building blocks. Attribute names (conv, bn, act, cv1, cv2, cv3, m) define the state_dict keys and
therefore must stay as they are for official checkpoints to load."""
from __future__ import annotations

from typing import Optional, Sequence, Type

import torch
import torch.nn as nn


def same_padding(kernel: int, padding: Optional[int] = None, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1."""
    if padding is not None:
        return padding
    effective = dilation * (kernel - 1) + 1
    return effective // 2


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation. After `fuse()` the batch norm is folded into the conv."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: Optional[int] = None, g: int = 1, d: int = 1,
                 act: bool = True, activation: Type[nn.Module] = nn.SiLU):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, same_padding(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = activation() if act is True else (act if isinstance(act, nn.Module) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "bn"):
            return self.act(self.bn(self.conv(x)))
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the batch norm into the convolution (inference only)."""
        if not hasattr(self, "bn"):
            return
        conv, bn = self.conv, self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          dilation=conv.dilation, groups=conv.groups, bias=True).to(conv.weight.device)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        fused.bias.copy_(bn.bias - bn.running_mean * scale)
        fused.requires_grad_(False)
        self.conv = fused
        del self.bn


class Bottleneck(nn.Module):
    """1x1 conv -> 3x3 conv, with a residual connection when shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 activation: Type[nn.Module] = nn.SiLU):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1, activation=activation)
        self.cv2 = Conv(hidden, c2, 3, 1, g=g, activation=activation)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block with three convolutions: n bottlenecks on one half, a plain 1x1 path on the other."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5,
                 activation: Type[nn.Module] = nn.SiLU):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 1, 1, activation=activation)
        self.cv2 = Conv(c1, hidden, 1, 1, activation=activation)
        self.cv3 = Conv(2 * hidden, c2, 1, activation=activation)
        self.m = nn.Sequential(*(Bottleneck(hidden, hidden, shortcut, g, e=1.0, activation=activation)
                                 for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast form: three chained max-pools of kernel k, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5, activation: Type[nn.Module] = nn.SiLU):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1, 1, activation=activation)
        self.cv2 = Conv(hidden * 4, c2, 1, 1, activation=activation)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), self.d)
