"""A YOLOv5 detection model built from a YOLOv5-style architecture description (yaml), and its Detect head.

The classes keep the original's module paths and names (models.yolo.DetectionModel, models.yolo.Detect,
models.common.Conv, ...), so a checkpoint of our model pickles as YOLOv5's own (utils/checkpoint.py)."""
from __future__ import annotations

import ast
import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import yaml

from models.activations import DEFAULT_ACTIVATION, resolve_activation
from models.common import C3, SPPF, Bottleneck, Concat, Conv

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SIZES = "nsmlx"
# The shipped architectures, from their files (yolov5<size>[6].yaml): P5 (yolov5n..x), then P6 (yolov5n6..x6),
# smallest first.
MODEL_NAMES = tuple(sorted((p.stem for p in CONFIG_DIR.glob("*.yaml") if re.fullmatch(r"yolov5[nsmlx]6?", p.stem)),
                           key=lambda name: (name.endswith("6"), _SIZES.index(name[6]))))
STRIDE_PROBE_SIZE = 256
# Layers whose first two arguments are (input channels, output channels) and that take an activation.
_CONV_LIKE = {"Conv": Conv, "Bottleneck": Bottleneck, "C3": C3, "SPPF": SPPF}
_REPEATED_INSIDE = {"C3"}  # the repeat count is an argument of the block, not a stack of blocks


class ArchitectureError(ValueError):
    """An architecture description this code cannot build (an unknown module, a malformed layer list)."""


def architecture(name: str) -> dict:
    """The shipped architecture `name` (e.g. 'yolov5s'), as a dict."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown architecture {name!r}")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def round_channels(channels: float, divisor: int = 8) -> int:
    """Scaled channel counts are rounded up to a multiple of 8."""
    return int(math.ceil(channels / divisor) * divisor)


def scaled_repeats(n: int, depth_multiple: float) -> int:
    return max(round(n * depth_multiple), 1) if n > 1 else n


def _argument(value, nc: int, anchors):
    """Arguments are literals; the strings 'nc' and 'anchors' name the model's; 'None' etc. are Python literals."""
    if not isinstance(value, str):
        return value
    if value == "nc":
        return nc
    if value == "anchors":
        return anchors
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value  # e.g. 'nearest'


# Bounds on an architecture description read from a file: far beyond every YOLOv5 model (x6: 1.33 / 1.25, at most
# 9 repeats, 1024 channels, 4 levels of 3 anchors), far below what would make building it a hang or an OOM kill.
MAX_CLASSES = 10_000
MAX_MULTIPLE = 3.0
MAX_LAYERS = 256
MAX_REPEATS = 64
MAX_CHANNELS = 8192
MAX_LEVELS, MAX_ANCHORS_PER_LEVEL = 8, 16
MAX_PARAMETERS = 300_000_000  # yolov5x6 has 141 million
MAX_ARGUMENT = 64  # kernel sizes, strides, paddings, groups, dilations, scale factors: YOLOv5 uses 1 to 6
MAX_ARGUMENT_TEXT = 32  # 'nc', 'anchors', 'nearest', 'None', ...


@dataclass(frozen=True)
class LayerPlan:
    """One layer as the description asks for it, before any module exists: what it is, what it reads, its
    arguments (channels scaled and filled in), how many times it is stacked and its output channels."""

    index: int
    source: Union[int, List[int]]
    kind: str
    args: tuple
    repeats: int
    out_channels: int


def _number_in(value, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high


def check_description(cfg: dict) -> None:
    """Bounds on what the description asks to build (classes, multiples, layers, repeats, anchors), checked before
    anything is allocated. Raises ArchitectureError."""
    if not isinstance(cfg, dict):
        raise ArchitectureError(f"the architecture is a {type(cfg).__name__}, not a mapping")
    nc, anchors = cfg.get("nc"), cfg.get("anchors")
    if not (isinstance(nc, int) and not isinstance(nc, bool) and 1 <= nc <= MAX_CLASSES):
        raise ArchitectureError(f"nc = {nc!r}: a number of classes from 1 to {MAX_CLASSES:,}")
    for key in ("depth_multiple", "width_multiple"):
        if not _number_in(cfg.get(key), 0, MAX_MULTIPLE):
            raise ArchitectureError(f"{key} = {cfg.get(key)!r}: a number in (0, {MAX_MULTIPLE}]")
    _check_anchors(anchors)
    layers = cfg.get("backbone"), cfg.get("head")
    if not all(isinstance(part, list) for part in layers) or not 2 <= len(layers[0]) + len(layers[1]) <= MAX_LAYERS:
        raise ArchitectureError(f"backbone and head: lists of 2 to {MAX_LAYERS} layers in all")
    for i, layer in enumerate(layers[0] + layers[1]):
        if not (isinstance(layer, list) and len(layer) == 4 and isinstance(layer[3], list)):
            raise ArchitectureError(f"layer {i}: [from, repeats, module, arguments] expected, got {str(layer)[:80]}")
        if not (isinstance(layer[1], int) and 1 <= layer[1] <= MAX_REPEATS):
            raise ArchitectureError(f"layer {i}: repeats = {layer[1]!r}: an integer from 1 to {MAX_REPEATS}")
        if layer[2] in _CONV_LIKE and not _number_in(layer[3][0] if layer[3] else None, 0, MAX_CHANNELS):
            raise ArchitectureError(f"layer {i}: {str(layer[3])[:80]}: the first argument is a number of channels "
                                    f"up to {MAX_CHANNELS}")
        sources = layer[0] if isinstance(layer[0], list) else [layer[0]]
        if not (1 <= len(sources) <= MAX_LEVELS and all(isinstance(j, int) and not isinstance(j, bool)
                                                        and -i - 1 <= j < max(i, 1) for j in sources)):
            raise ArchitectureError(f"layer {i}: from = {str(layer[0])[:80]}: earlier layers' indices")
        if layer[2] == "Detect":
            _check_head(layer)
            continue
        for value in layer[3][1:] if layer[2] in _CONV_LIKE else layer[3]:
            if isinstance(value, str) and len(value) > MAX_ARGUMENT_TEXT or isinstance(value, (list, dict)) \
                    or _is_number(value) and not -1 <= value <= MAX_ARGUMENT:
                raise ArchitectureError(f"layer {i}: argument {str(value)[:40]} out of bounds (numbers from -1 to "
                                        f"{MAX_ARGUMENT}, short texts)")


def _check_anchors(anchors) -> None:
    if isinstance(anchors, list):
        if not (1 <= len(anchors) <= MAX_LEVELS and all(
                isinstance(level, list) and 2 <= len(level) <= 2 * MAX_ANCHORS_PER_LEVEL and len(level) % 2 == 0
                and all(_number_in(a, 0, 1e5) for a in level) for level in anchors)):
            raise ArchitectureError(f"anchors: 1 to {MAX_LEVELS} levels of up to {MAX_ANCHORS_PER_LEVEL} "
                                    "(width, height) pairs of positive sizes")
    elif not (isinstance(anchors, int) and not isinstance(anchors, bool) and 1 <= anchors <= MAX_ANCHORS_PER_LEVEL):
        raise ArchitectureError(f"anchors = {str(anchors)[:80]}: a list of levels or a number of anchors")


def _check_head(layer: list) -> None:
    """The Detect head's own arguments: [nc, anchors], each the model's ('nc', 'anchors') or written out."""
    args = layer[3]
    if len(args) != 2:
        raise ArchitectureError(f"the Detect head's arguments: [nc, anchors], got {str(args)[:80]}")
    nc, anchors = args
    if nc != "nc" and not (isinstance(nc, int) and not isinstance(nc, bool) and 1 <= nc <= MAX_CLASSES):
        raise ArchitectureError(f"the Detect head's classes = {str(nc)[:40]}: 1 to {MAX_CLASSES:,}")
    if anchors != "anchors":
        _check_anchors(anchors)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def estimated_parameters(plans: Sequence[LayerPlan]) -> int:
    """About how many parameters the planned layers hold (convolution weights; what decides memory and build
    time), computed before anything is built."""
    total = 0
    for p in plans:
        if p.kind == "Conv":
            c1, c2, k = p.args[0], p.args[1], p.args[2] if len(p.args) > 2 else 1
            one = c1 * c2 * _square(k)
        elif p.kind in ("C3", "Bottleneck"):
            c1, c2 = p.args[0], p.args[1]
            e = p.args[5] if p.kind == "C3" and len(p.args) > 5 else p.args[4] if p.kind == "Bottleneck" \
                and len(p.args) > 4 else 0.5
            hidden = int(c2 * e)
            repeats = p.args[2] if p.kind == "C3" else 0
            one = (2 * c1 * hidden + 2 * hidden * c2 + repeats * 10 * hidden * hidden) if p.kind == "C3" \
                else c1 * hidden + 9 * hidden * c2
        elif p.kind == "SPPF":
            one = p.args[0] // 2 * (p.args[0] + 4 * p.args[1])
        elif p.kind == "Detect":
            nc, anchors, channels = p.args[0], p.args[1], p.args[-1]
            one = sum(channels) * (len(anchors[0]) // 2) * (nc + 5)
        else:
            one = 0
        total += int(one) * p.repeats
    return total


def _square(k) -> int:
    return int(k) ** 2 if _is_number(k) else 1


def plan_layers(cfg: dict, in_channels: int = 3) -> List[LayerPlan]:
    """What build_layers builds, computed from the description alone (checked first: check_description)."""
    check_description(cfg)
    nc, anchors = cfg["nc"], cfg["anchors"]
    gd, gw = cfg["depth_multiple"], cfg["width_multiple"]
    num_outputs = (anchors if isinstance(anchors, int) else len(anchors[0]) // 2) * (nc + 5)
    channels: List[int] = [in_channels]
    plans = []
    for i, (source, repeats, kind, args) in enumerate(cfg["backbone"] + cfg["head"]):
        args = [_argument(a, nc, anchors) for a in args]
        if kind != "Detect" and any(_is_number(a) and not -1 <= a <= MAX_ARGUMENT
                                    for a in (args[1:] if kind in _CONV_LIKE else args)):
            raise ArchitectureError(f"layer {i}: arguments {str(args)[:80]} out of bounds (-1 to {MAX_ARGUMENT})")
        n = scaled_repeats(repeats, gd)
        if kind in _CONV_LIKE:
            c1, c2 = channels[source], args[0]
            if c2 != num_outputs:
                c2 = round_channels(c2 * gw)
            args = [c1, c2, *args[1:]]
            if kind in _REPEATED_INSIDE:
                args.insert(2, n)
                n = 1
        elif kind == "Concat":
            c2 = sum(channels[j] for j in source)
        elif kind == "Detect":
            args.append([channels[j] for j in source])
            if isinstance(args[1], int):  # a number of anchors instead of sizes
                args[1] = [list(range(args[1] * 2))] * len(source)
            c2 = channels[source] if isinstance(source, int) else channels[source[0]]
        elif kind in ("nn.Upsample", "nn.BatchNorm2d"):
            c2 = channels[source]
        else:
            raise ArchitectureError(f"layer {i}: unsupported module {kind!r}")
        plans.append(LayerPlan(i, source, kind, tuple(args), n, c2))
        if i == 0:
            channels = []
        channels.append(c2)
    if plans[-1].kind != "Detect":
        raise ArchitectureError("the last layer must be the Detect head")
    parameters = estimated_parameters(plans)
    if parameters > MAX_PARAMETERS:
        raise ArchitectureError(f"the architecture would hold about {parameters:,} parameters, more than "
                                f"{MAX_PARAMETERS:,}")
    return plans


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
