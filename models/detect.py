"""The YOLOv5 detection head: one 1x1 conv per level, anchors, and box decoding."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


class Detect(nn.Module):
    """Per level, predicts `na` anchors x (4 box + 1 objectness + nc classes) at every grid cell.

    Training mode returns the raw maps, each (B, na, H, W, 5 + nc). Eval mode also decodes them into
    (B, N, 5 + nc) rows of centre-x, centre-y, w, h in input pixels, sigmoid objectness and class scores.
    `anchors` (a buffer) holds anchor sizes in grid units of each level once the strides are known.
    """

    def __init__(self, nc: int = 80, anchors: Sequence[Sequence[float]] = (), ch: Sequence[int] = (),
                 inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid: List[torch.Tensor] = [torch.empty(0)] * self.nl
        self.anchor_grid: List[torch.Tensor] = [torch.empty(0)] * self.nl
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.inplace = inplace
        self.stride = torch.zeros(self.nl)  # set by the model once the level sizes are known
        self.export = False  # eval mode returns only the decoded rows (for ONNX)

    def forward(self, xs: List[torch.Tensor]):
        decoded = []
        for i in range(self.nl):
            x = self.m[i](xs[i])
            bs, _, ny, nx = x.shape
            x = x.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            xs[i] = x
            if not self.training:
                if self.grid[i].shape[2:4] != x.shape[2:4] or self.grid[i].device != x.device:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                xy, wh, conf = x.sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i]) * self.stride[i]
                wh = (wh * 2) ** 2 * self.anchor_grid[i]
                decoded.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        if self.training:
            return xs
        if self.export:
            return torch.cat(decoded, 1)
        return torch.cat(decoded, 1), xs

    def _make_grid(self, nx: int, ny: int, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = (1, self.na, ny, nx, 2)
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij") if _meshgrid_has_indexing() else torch.meshgrid(y, x)
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5  # cell offset: predictions span -0.5..1.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid

    @torch.no_grad()
    def initialize_biases(self, class_frequency: Optional[torch.Tensor] = None) -> None:
        """Prior biases: about 8 objects per 640x640 image, classes equally likely (or by frequency)."""
        for conv, stride in zip(self.m, self.stride):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / float(stride)) ** 2)
            if class_frequency is None:
                b[:, 5:5 + self.nc] += math.log(0.6 / (self.nc - 0.99999))
            else:
                b[:, 5:5 + self.nc] += torch.log(class_frequency / class_frequency.sum())
            conv.bias = nn.Parameter(b.view(-1), requires_grad=True)


def _meshgrid_has_indexing() -> bool:
    import inspect

    try:
        return "indexing" in inspect.signature(torch.meshgrid).parameters
    except (TypeError, ValueError):  # builtins without a signature (torch >= 1.10 accepts indexing)
        return True
