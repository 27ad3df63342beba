"""A YOLOv5 detection model built from a YOLOv5-style architecture description (yaml), and its Detect head.

The classes keep the original's module paths and names (models.yolo.DetectionModel, models.yolo.Detect,
models.common.Conv, ...), so a checkpoint of our model pickles as YOLOv5's own (utils/checkpoint.py)."""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn

from models import common
from models.activations import DEFAULT_ACTIVATION, resolve_activation
from models.architecture import CONV_LIKE, ArchitectureError, LayerPlan, architecture, plan_layers
from models.common import Concat, Conv

STRIDE_PROBE_SIZE = 256
_CONV_LIKE = {name: getattr(common, name) for name in CONV_LIKE}  # models.common's classes by their names


def _make_layer(plan: LayerPlan, activation: Type[nn.Module]) -> nn.Module:
    if plan.kind in _CONV_LIKE:
        return _CONV_LIKE[plan.kind](*plan.args, activation=activation)
    if plan.kind == "Concat":
        return Concat(*plan.args)
    if plan.kind == "Detect":
        return Detect(*plan.args)
    if plan.kind == "nn.Upsample":
        return nn.Upsample(*plan.args)
    return nn.BatchNorm2d(plan.out_channels)


def build_layers(cfg: dict, in_channels: int, activation: Type[nn.Module]):
    """Returns (nn.Sequential of layers, sorted indices of the layers whose outputs later layers read)."""
    layers, saved = [], set()
    for plan in plan_layers(cfg, in_channels):
        i, source = plan.index, plan.source
        layer = nn.Sequential(*(_make_layer(plan, activation) for _ in range(plan.repeats))) if plan.repeats > 1 \
            else _make_layer(plan, activation)
        layer.i, layer.f, layer.type = i, source, plan.kind
        layer.np = sum(p.numel() for p in layer.parameters())
        saved.update(j % i for j in ([source] if isinstance(source, int) else source) if j != -1)
        layers.append(layer)
    return nn.Sequential(*layers), sorted(saved)


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


class DetectionModel(nn.Module):
    """A YOLOv5 detector. `model` holds the layers in order; the last one is the Detect head."""

    def __init__(self, cfg: Union[str, dict] = "yolov5s", ch: int = 3, nc: Optional[int] = None,
                 anchors: Optional[Sequence] = None, activation: str = DEFAULT_ACTIVATION):
        super().__init__()
        self.yaml = copy.deepcopy(architecture(cfg) if isinstance(cfg, str) else cfg)
        if nc is not None:
            self.yaml["nc"] = nc
        if anchors is not None:
            self.yaml["anchors"] = [list(a) for a in anchors]
        self.activation = resolve_activation(activation).__name__
        try:
            self.model, self.save = build_layers(self.yaml, ch, resolve_activation(activation))
        except ArchitectureError:
            raise
        except (KeyError, IndexError, TypeError, ValueError) as exc:  # a malformed description from a file
            raise ArchitectureError(f"malformed architecture ({type(exc).__name__}: {exc})") from None
        self.names: Dict[int, str] = {i: str(i) for i in range(self.yaml["nc"])}
        self._init_weights()
        head = self.detect
        head.inplace = self.yaml.get("inplace", True)
        self.stride = self._measure_strides(ch)
        head.stride = self.stride
        head.anchors /= self.stride.view(-1, 1, 1)
        self._check_anchor_order()
        head.initialize_biases()

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def nc(self) -> int:
        return self.detect.nc

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
            elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
                m.inplace = True

    def _measure_strides(self, ch: int) -> torch.Tensor:
        outputs = self.forward(torch.zeros(1, ch, STRIDE_PROBE_SIZE, STRIDE_PROBE_SIZE))
        return torch.tensor([STRIDE_PROBE_SIZE / o.shape[-2] for o in outputs])

    def _check_anchor_order(self) -> None:
        """Anchor sizes must grow with stride (as the levels do)."""
        head = self.detect
        area = head.anchors.prod(-1).mean(-1).view(-1)
        da, ds = area[-1] - area[0], head.stride[-1] - head.stride[0]
        if da and da.sign() != ds.sign():
            head.anchors[:] = head.anchors.flip(0)

    def forward(self, x: torch.Tensor):
        outputs: List[Optional[torch.Tensor]] = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x

    def fuse(self) -> DetectionModel:
        """Fold batch norms into convolutions, for inference."""
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self

    @property
    def max_stride(self) -> int:
        return int(self.stride.max())

    @property
    def image_size_step(self) -> int:
        """Image sides must be multiples of this, the largest stride (at least 32): every level's grid then
        divides evenly (64 for P6 models)."""
        return max(self.max_stride, 32)

    def fit_image_size(self, img_size: int) -> int:
        """`img_size` rounded up to a multiple of image_size_step, for training and prediction alike."""
        step = self.image_size_step
        return -(-int(img_size) // step) * step
