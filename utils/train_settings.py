"""The settings of one training run: everything the trainer reads, in one typed object. Each setting says, beside
its default, how YOLOv5's train.py names it: as a command-line flag (what a user may write in `args_options`) and
as an option its checkpoints record (`opt`). Adding a flag is adding one field here."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from utils.hyperparameters import SCRATCH_LOW


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class Flag:
    """A setting as a train.py flag: argparse's keyword arguments (their `default` parses to the setting's
    default), and how the parsed value becomes the setting."""

    name: str
    argparse: Dict[str, Any]
    to_setting: Callable[[Any], Any] = _same

    @property
    def usage(self) -> str:
        metavar = self.argparse.get("metavar")
        return f"{self.name} {metavar}" if metavar else self.name


def setting(default: Any = None, *, flag: Optional[Flag] = None, opt: Optional[str] = None,
            to_opt: Callable[[Any], Any] = _same, factory: Optional[Callable[[], Any]] = None) -> Any:
    """A field of TrainSettings: its default, its train.py flag if it has one, and its name (and form) in `opt`."""
    metadata = {"flag": flag, "opt": opt, "to_opt": to_opt}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def hyp_item(text: str) -> Tuple[str, float]:
    """One `--hyp KEY=VALUE` (a flag of this executor: YOLOv5's train.py reads its hyp from a file)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key == "label_smoothing":
        raise argparse.ArgumentTypeError("label smoothing is set by --label-smoothing, as in YOLOv5")
    if key not in SCRATCH_LOW:
        known = ", ".join(SCRATCH_LOW)
        raise argparse.ArgumentTypeError(f"unknown hyper-parameter {key!r}; known: {known}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"hyper-parameter {key} needs a number, got {value!r}") from None


def _freeze_layers(values: List[int]) -> int:
    """YOLOv5's --freeze: one number freezes that many first layers; several name the layers (here: up to the
    last named)."""
    return values[0] if len(values) == 1 else max(values) + 1


@dataclass(frozen=True)
class TrainSettings:
    model: str = setting("yolov5s", opt="cfg", to_opt=lambda name: f"{name}.yaml")
    epochs: int = setting(100, opt="epochs")
    batch_size: int = setting(16, opt="batch_size")  # per process
    img_size: int = setting(640, opt="imgsz")
    workers: int = setting(0, opt="workers")  # data-loading processes per training process
    sync_bn: bool = setting(False, opt="sync_bn")
    device: torch.device = setting(factory=lambda: torch.device("cpu"))
    hyp: Dict[str, float] = setting(  # in the checkpoint's opt as YOLOv5 keeps it: without label smoothing
        factory=lambda: dict(SCRATCH_LOW), opt="hyp", to_opt=dict,
        flag=Flag("--hyp", dict(type=hyp_item, nargs="+", default=[], metavar="KEY=VALUE"),
                  to_setting=lambda pairs: dict(SCRATCH_LOW, **dict(pairs))))
    label_smoothing: float = setting(0.0, flag=Flag("--label-smoothing", dict(type=float, default=0.0)),
                                     opt="label_smoothing")
    optimizer: str = setting("SGD", flag=Flag("--optimizer", dict(choices=["SGD", "Adam", "AdamW"], default="SGD")),
                             opt="optimizer")
    cos_lr: bool = setting(False, flag=Flag("--cos-lr", dict(action="store_true")), opt="cos_lr")
    multi_scale: bool = setting(False, flag=Flag("--multi-scale", dict(action="store_true")), opt="multi_scale")
    single_cls: bool = setting(False, flag=Flag("--single-cls", dict(action="store_true")), opt="single_cls")
    rect: bool = setting(False, flag=Flag("--rect", dict(action="store_true")), opt="rect")
    cache: Optional[str] = setting(None, flag=Flag("--cache", dict(nargs="?", const="ram", choices=["ram", "disk"],
                                                                   default=None)), opt="cache")
    freeze: int = setting(0, flag=Flag("--freeze", dict(type=int, nargs="+", default=[0]), to_setting=_freeze_layers),
                          opt="freeze", to_opt=lambda layers: [layers])
    patience: int = setting(100, flag=Flag("--patience", dict(type=int, default=100)), opt="patience")
    autoanchor: bool = setting(True, flag=Flag("--noautoanchor", dict(action="store_true"),
                                               to_setting=lambda off: not off),
                               opt="noautoanchor", to_opt=lambda on: not on)
    seed: int = setting(0, flag=Flag("--seed", dict(type=int, default=0)), opt="seed")
    image_weights: bool = setting(False, flag=Flag("--image-weights", dict(action="store_true")), opt="image_weights")

    @property
    def training_hyp(self) -> Dict[str, float]:
        """The hyper-parameters the loss and the augmentation read: `hyp` with label smoothing, as YOLOv5's
        train.py puts its flag into its hyp."""
        return dict(self.hyp, label_smoothing=self.label_smoothing)

    def yolov5_opt(self) -> Dict[str, Any]:
        """The settings under the names of YOLOv5 train.py's options, as its checkpoints keep them (`opt`)."""
        return {f.metadata["opt"]: f.metadata["to_opt"](getattr(self, f.name))
                for f in dataclasses.fields(self) if f.metadata["opt"]}


def flags() -> Iterator[Tuple[str, Flag]]:
    """(setting name, flag) of every setting given as a train.py flag, in declaration order."""
    for f in dataclasses.fields(TrainSettings):
        if f.metadata["flag"] is not None:
            yield f.name, f.metadata["flag"]
