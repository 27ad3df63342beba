"""YOLOv5 architecture descriptions (the yaml files of models/configs, or a checkpoint's copy): reading the shipped
ones, checking a description's bounds before anything is allocated, and planning its layers (arguments, repeats,
channels) without building them; models.yolo builds the planned layers."""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Union

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SIZES = "nsmlx"
# The shipped architectures, from their files (yolov5<size>[6].yaml): P5 (yolov5n..x), then P6 (yolov5n6..x6),
# smallest first.
MODEL_NAMES = tuple(sorted((p.stem for p in CONFIG_DIR.glob("*.yaml") if re.fullmatch(r"yolov5[nsmlx]6?", p.stem)),
                           key=lambda name: (name.endswith("6"), _SIZES.index(name[6]))))
# Layers whose first two arguments are (input channels, output channels) and that take an activation.
CONV_LIKE = ("Conv", "Bottleneck", "C3", "SPPF")
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
        if layer[2] in CONV_LIKE and not _number_in(layer[3][0] if layer[3] else None, 0, MAX_CHANNELS):
            raise ArchitectureError(f"layer {i}: {str(layer[3])[:80]}: the first argument is a number of channels "
                                    f"up to {MAX_CHANNELS}")
        sources = layer[0] if isinstance(layer[0], list) else [layer[0]]
        if not (1 <= len(sources) <= MAX_LEVELS and all(isinstance(j, int) and not isinstance(j, bool)
                                                        and -i - 1 <= j < max(i, 1) for j in sources)):
            raise ArchitectureError(f"layer {i}: from = {str(layer[0])[:80]}: earlier layers' indices")
        if layer[2] == "Detect":
            _check_head(layer)
            continue
        for value in layer[3][1:] if layer[2] in CONV_LIKE else layer[3]:
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
                                    for a in (args[1:] if kind in CONV_LIKE else args)):
            raise ArchitectureError(f"layer {i}: arguments {str(args)[:80]} out of bounds (-1 to {MAX_ARGUMENT})")
        n = scaled_repeats(repeats, gd)
        if kind in CONV_LIKE:
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
