"""Reading and writing model checkpoints.

Writes YOLOv5 v7.0's own layout (`model`: the model object in fp16 and eval mode, pickled under the original's
module paths, plus `epoch`, `best_fitness`, `ema`, `optimizer`, `opt`, `date`), so that YOLOv5's detect.py,
val.py, export.py and torch.hub open our models; what we need beyond that (class names, architecture,
activation, training metadata) sits under `ymir`, a key the original ignores.

Reads, through `utils.restricted_pickle` (nothing in the file is executed, the original code is never imported):
those files, official YOLOv5 v6.x/v7.0 files (a pickled `DetectionModel` under `ema` or `model`), and our earlier
format (format_version 1: a plain dict with the state_dict, still in users' model stores).
"""
from __future__ import annotations

import copy
import datetime
import inspect
import io
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from models.activations import DEFAULT_ACTIVATION
from models.architecture import MAX_PARAMETERS, ArchitectureError, check_description, plan_layers
from models.yolo import DetectionModel
from utils import restricted_pickle
from utils.restricted_pickle import PickledObject

LOG = logging.getLogger(__name__)
FORMAT = "ymir-yolov5"
FORMAT_VERSION = 2  # 1: a plain dict of our own (read, no longer written); 2: YOLOv5's layout, ours under "ymir"


class CheckpointError(Exception):
    """The file is not a checkpoint we can use (or is unsafe to read)."""


@dataclass
class Checkpoint:
    """What a checkpoint holds, independent of who wrote it."""

    state_dict: Dict[str, torch.Tensor]
    yaml: dict
    names: List[str]
    activation: str = DEFAULT_ACTIVATION
    source: str = FORMAT  # "yolov5" for official files
    epoch: Optional[int] = None
    meta: dict = field(default_factory=dict)

    @property
    def nc(self) -> int:
        return int(self.yaml["nc"])


def _torch_load(path: Union[str, Path]):
    kwargs = {"map_location": "cpu", "pickle_module": restricted_pickle}
    if "weights_only" in inspect.signature(torch.load).parameters:
        kwargs["weights_only"] = False  # the restricted unpickler is the safety, not torch's allow-list
    return torch.load(str(path), **kwargs)


def stand_in_state_dict(module: PickledObject, prefix: str = "") -> OrderedDict[str, torch.Tensor]:
    """The state_dict of a pickled nn.Module tree, in torch's order (parameters, buffers, children)."""
    state = module.__dict__
    result: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, value in (state.get("_parameters") or {}).items():
        if value is not None:
            result[prefix + name] = value.detach()
    skip = state.get("_non_persistent_buffers_set") or set()
    for name, value in (state.get("_buffers") or {}).items():
        if value is not None and name not in skip:
            result[prefix + name] = value
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            result.update(stand_in_state_dict(child, f"{prefix}{name}."))
    return result


def _stand_in_activation(model: PickledObject) -> str:
    """Activation class name of the first Conv block in a pickled model tree."""
    stack, seen = [model], set()
    while stack:
        node = stack.pop(0)
        if id(node) in seen:  # a crafted file may make the tree a cycle
            continue
        seen.add(id(node))
        modules = node.__dict__.get("_modules") or {}
        if node.qualified_name.endswith(".Conv") and isinstance(modules.get("act"), PickledObject):
            return modules["act"].qualified_name.rsplit(".", 1)[-1]
        stack.extend(m for m in modules.values() if isinstance(m, PickledObject))
    return DEFAULT_ACTIVATION


def _names_list(names, nc: int) -> List[str]:
    """The class names of an official file as text, in class-index order (the index itself where a file has
    none); YOLOv5 keeps them as its data YAML parsed them, so a name may be a number or a boolean."""
    if isinstance(names, dict):
        return [str(names.get(i, i)) for i in range(nc)]
    if isinstance(names, (list, tuple)) and len(names) == nc:
        return [str(n) for n in names]
    return [str(i) for i in range(nc)]


def check_tensors(state: Dict[str, torch.Tensor]) -> None:
    """Weights are tensors that own their elements: no broadcast view (a stride of 0, which lets a few bytes of file
    claim any size and makes a copy allocate it), and no more elements in all than MAX_PARAMETERS allows."""
    total = 0
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"damaged checkpoint: its weights hold a {type(value).__name__} under the "
                                  f"{type(key).__name__} key {str(key)[:60]!r}")
        if any(stride == 0 and size > 1 for stride, size in zip(value.stride(), value.shape)):
            raise CheckpointError(f"damaged checkpoint: weight {key} of shape {tuple(value.shape)} is a broadcast "
                                  "view, not stored weights")
        total += value.numel()
    if total > 2 * MAX_PARAMETERS:
        raise CheckpointError(f"the weights hold {total:,} numbers, more than any model this executor builds")


# The module of each conv-like layer whose weight's first dimension is the layer's output channels.
_OUTPUT_WEIGHT = {"Conv": "conv.weight", "C3": "cv3.conv.weight", "SPPF": "cv2.conv.weight",
                  "Bottleneck": "cv2.conv.weight"}


def check_description_fits_weights(yaml_dict, state_dict: Dict[str, torch.Tensor]) -> None:
    """The recorded architecture is within bounds and asks for the layers, repeats, channels and classes the
    weights have: checked from the description alone, before any model is built (a crafted description could
    otherwise ask for a model of tens of GB, or take minutes to build). Raises CheckpointError."""
    try:
        plans = plan_layers(yaml_dict)
    except ArchitectureError as exc:
        raise CheckpointError(f"the checkpoint's architecture is refused: {exc}") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's architecture is malformed ({type(exc).__name__}: {exc})") from None
    layers = {int(k.split(".")[1]) for k in state_dict if k.startswith("model.") and k.split(".")[1].isdigit()}
    if max(layers, default=-1) != len(plans) - 1:  # the Detect head, the last layer, always has weights
        raise CheckpointError(f"the weights hold layers up to {max(layers, default=-1)}; the architecture has "
                              f"{len(plans)} layers")

    def first_dim(key: str) -> Optional[int]:
        tensor = state_dict.get(key)
        return int(tensor.shape[0]) if isinstance(tensor, torch.Tensor) and tensor.dim() > 0 else None

    def stacked(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})

    for p in plans:
        prefix = f"model.{p.index}."
        if p.repeats > 1 and stacked(prefix) != p.repeats:
            raise CheckpointError(f"layer {p.index}: the architecture stacks {p.repeats} {p.kind} blocks, the weights "
                                  f"{stacked(prefix)}")
        if p.kind in _OUTPUT_WEIGHT:
            key = prefix + ("0." if p.repeats > 1 else "") + _OUTPUT_WEIGHT[p.kind]
            if first_dim(key) != p.out_channels:
                raise CheckpointError(f"layer {p.index} ({p.kind}): the architecture asks for {p.out_channels} output "
                                      f"channels, the weights have {first_dim(key)}")
        if p.kind == "C3" and stacked(prefix + "m.") != p.args[2]:
            raise CheckpointError(f"layer {p.index} (C3): the architecture asks for {p.args[2]} bottlenecks, the "
                                  f"weights have {stacked(prefix + 'm.')}")
        if p.kind == "Detect":
            nc, anchors = p.args[0], p.args[1]
            outputs = (len(anchors[0]) // 2) * (nc + 5)
            found = [first_dim(f"{prefix}m.{j}.weight") for j in range(len(anchors))]
            if found != [outputs] * len(anchors):
                raise CheckpointError(f"the Detect head: the architecture asks for {nc} classes ({outputs} outputs on "
                                      f"each of {len(anchors)} levels), the weights have {found}")


def check_names(names, nc: int) -> List[str]:
    """Class names as the checkpoint gives them: nc non-empty strings. Raises CheckpointError."""
    bad = [(i, n) for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad or len(names) != nc:
        raise CheckpointError(f"damaged checkpoint: its class names must be {nc} non-empty texts; got "
                              f"{len(names)}" + (f", e.g. class {bad[0][0]}: {bad[0][1]!r}" if bad else ""))
    return list(names)


def read_checkpoint(path: Union[str, Path]) -> Checkpoint:
    """Read a checkpoint of ours or an official YOLOv5 one. Raises CheckpointError."""
    try:
        raw = _torch_load(path)
    except restricted_pickle.UnsafePickleError as exc:
        raise CheckpointError(f"{path}: refused: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except Exception as exc:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a checkpoint (a {type(raw).__name__}, not a dict)")
    if raw.get("format") == FORMAT:  # format_version 1
        ckpt = _from_ours(raw, path)
    else:
        try:
            ckpt = _from_pickled_model(raw, path)
        except ArchitectureError as exc:
            raise CheckpointError(f"{path}: the checkpoint's architecture is refused: {exc}") from None
        except (AttributeError, TypeError, ValueError, KeyError, RecursionError) as exc:  # a malformed module tree
            raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from None
    try:
        check_description_fits_weights(ckpt.yaml, ckpt.state_dict)
        ckpt.names = check_names(ckpt.names, ckpt.nc)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except Exception as exc:  # a description crafted past every bound above: still the file's fault
        raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    return ckpt


def _from_pickled_model(raw: dict, path) -> Checkpoint:
    """Ours (format_version 2, our metadata under `ymir`) or an official file: a pickled DetectionModel."""
    ours = raw.get("ymir")
    if isinstance(ours, dict) and ours.get("format") == FORMAT and isinstance(raw.get("model"), PickledObject):
        return _from_ours(dict(ours, state_dict=stand_in_state_dict(raw["model"])), path)
    model = raw.get("ema") or raw.get("model")
    if isinstance(model, PickledObject) and isinstance(model.__dict__.get("yaml"), dict):
        yaml_dict = dict(model.__dict__["yaml"])
        check_description(yaml_dict)
        state = stand_in_state_dict(model)
        check_tensors(state)
        nc = int(yaml_dict["nc"])
        epoch = raw.get("epoch")
        meta = {"date": raw.get("date") if isinstance(raw.get("date"), str) else None}
        opt = raw.get("opt")
        size = opt.get("imgsz") if isinstance(opt, dict) else None  # train.py's --imgsz: one number or [n, n]
        size = size[0] if isinstance(size, (list, tuple)) and size else size
        if isinstance(size, int) and not isinstance(size, bool):
            meta["img_size"] = size
        return Checkpoint(
            state_dict={k: v.float() if v.is_floating_point() else v for k, v in state.items()},
            yaml=yaml_dict, names=_names_list(model.__dict__.get("names"), nc),
            activation=_stand_in_activation(model), source="yolov5",
            epoch=epoch if isinstance(epoch, int) else None, meta=meta)
    raise CheckpointError(f"{path}: neither a YOLOv5 checkpoint nor one of ours (keys: {sorted(map(str, raw))[:8]})")


def _from_ours(raw: dict, path) -> Checkpoint:
    try:
        check_tensors(raw["state_dict"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None
    try:
        return Checkpoint(state_dict={k: v.float() if v.is_floating_point() else v
                                      for k, v in raw["state_dict"].items()},
                          yaml=dict(raw["yaml"]), names=list(raw["names"]),
                          activation=raw.get("activation", DEFAULT_ACTIVATION), source=FORMAT,
                          epoch=raw.get("epoch"), meta=dict(raw.get("meta") or {}))
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({exc})") from None


def build_model(ckpt: Checkpoint) -> DetectionModel:
    """The checkpoint's architecture with all of its weights (strict)."""
    try:
        model = DetectionModel(ckpt.yaml, nc=ckpt.nc, activation=ckpt.activation)
    except ArchitectureError as exc:
        raise CheckpointError(f"the checkpoint's architecture cannot be built: {exc}") from None
    except Exception as exc:  # layers that do not fit together (a Concat of other sizes), found by the stride probe
        raise CheckpointError(f"the checkpoint's architecture cannot be built ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None
    try:
        missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as exc:  # shapes that differ beyond the first dimension
        raise CheckpointError(f"weights do not fit the architecture: {str(exc)[:300]}") from None
    if missing or unexpected:
        raise CheckpointError(f"weights do not fit the architecture: {len(missing)} missing "
                              f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    model.names = {i: n for i, n in enumerate(ckpt.names)}
    return model.float().eval()


def transfer_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor],
                     exclude: Tuple[str, ...] = ("anchors",)) -> Tuple[int, int]:
    """Copy every tensor whose name and shape match (except `exclude`d names); return (copied, model total)."""
    own = model.state_dict()
    matched = {k: v for k, v in state_dict.items()
               if k in own and v.shape == own[k].shape and not any(x in k for x in exclude)}
    own.update(matched)
    model.load_state_dict(own)
    LOG.info("transferred %d/%d tensors from the checkpoint", len(matched), len(own))
    return len(matched), len(own)


def yolov5_layout_model(model: DetectionModel, names: List[str], hyp: Optional[dict] = None) -> DetectionModel:
    """A copy of `model` as YOLOv5's train.py leaves one in a checkpoint: fp16, eval mode, no gradients, in the
    standard (contiguous) memory format whatever format it trained in, names as a dict, `nc` and `hyp` attributes;
    the Detect head's grids empty (rebuilt for each input size). The memory format matters: YOLOv5's
    attempt_load fuses each Conv with its BatchNorm through `weight.view(out_channels, -1)`, which a
    channels-last weight refuses."""
    portable = copy.deepcopy(model).eval().cpu().half()  # loadable without a GPU
    portable.to(memory_format=torch.contiguous_format)
    for p in portable.parameters():
        p.requires_grad_(False)
    portable.names = dict(enumerate(names))
    portable.__dict__["nc"] = len(names)  # an attribute in YOLOv5 (train.py sets it); a property of ours
    portable.hyp = dict(hyp or {})
    head = portable.detect
    head.grid = [torch.empty(0)] * head.nl
    head.anchor_grid = [torch.empty(0)] * head.nl
    return portable


def save_checkpoint(path: Union[str, Path], model: DetectionModel, names: List[str], epoch: Optional[int] = None,
                    meta: Optional[dict] = None, opt: Optional[dict] = None,
                    best_fitness: Optional[float] = None) -> None:
    """YOLOv5 v7.0's checkpoint layout (see the module's doc), written atomically. `meta` (plain types) is ours:
    training metadata such as the image size and the metrics; `opt` holds the training options under the names
    of YOLOv5's train.py options, `meta['hyp']` its hyper-parameters."""
    meta = dict(meta or {})
    payload = {
        "epoch": -1 if epoch is None else epoch, "best_fitness": best_fitness,
        "model": yolov5_layout_model(model, names, meta.get("hyp")), "ema": None, "updates": None,
        "optimizer": None, "opt": dict(opt or {}), "git": None,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "ymir": {"format": FORMAT, "format_version": FORMAT_VERSION, "yaml": copy.deepcopy(model.yaml),
                 "names": list(names), "activation": getattr(model, "activation", DEFAULT_ACTIVATION),
                 "epoch": epoch, "meta": meta},
    }
    tmp = Path(str(path) + ".tmp")
    buffer = io.BytesIO()  # serialised in memory: torch 1.10's file writer aborts the process on a full disk
    torch.save(payload, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        tmp.replace(path)
    except BaseException:  # a full disk, a signal: no partial file left behind
        tmp.unlink(missing_ok=True)
        raise
