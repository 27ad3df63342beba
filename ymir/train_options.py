"""`args_options`: YOLOv5 training flags accepted in the template's free-text field, parsed without a shell."""
from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Dict, Optional

from utils.hyperparameters import SCRATCH_LOW, describe_range, in_range
from ymir.errors import ConfigError

# Flags YOLOv5 has that cannot apply here, and why.
REFUSED = {
    "--project": "outputs always go to /out", "--name": "outputs always go to /out",
    "--evolve": "hyper-parameter evolution is not a YMIR task", "--resume": "a YMIR task never resumes",
    "--noval": "every epoch is validated (YMIR needs the mAP)", "--nosave": "use save_best_only",
    "--noplots": "plots go to TensorBoard", "--weights": "the platform chooses the weights",
    "--cfg": "use the model key", "--data": "the platform gives the dataset", "--device": "the platform sets gpu_id",
    "--epochs": "use the epochs key", "--batch-size": "use the batch_size_per_gpu key",
    "--img-size": "use the img_size key", "--imgsz": "use the img_size key", "--img": "use the img_size key",
    "--workers": "use the num_workers_per_gpu key", "--sync-bn": "use the sync_bn key",
    "--save-period": "use the save_period key", "--quad": "not supported by this executor",
    "--bucket": "no network at run time",
    "--upload_dataset": "no network at run time", "--entity": "no network at run time",
    "--bbox_interval": "no external loggers", "--artifact_alias": "no external loggers",
    "--local_rank": "the executor launches its own processes",
    "--local-rank": "the executor launches its own processes",
}


@dataclass(frozen=True)
class TrainOptions:
    cos_lr: bool = False
    optimizer: str = "SGD"
    multi_scale: bool = False
    single_cls: bool = False
    rect: bool = False
    cache: Optional[str] = None
    freeze: int = 0
    patience: int = 100
    hyp: Dict[str, float] = field(default_factory=lambda: dict(SCRATCH_LOW))
    autoanchor: bool = True
    seed: int = 0
    image_weights: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit
        raise ConfigError(f"config key 'args_options': {message}")


def _hyp_item(text: str):
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key not in SCRATCH_LOW:
        raise argparse.ArgumentTypeError(f"unknown hyper-parameter {key!r}; known: {', '.join(SCRATCH_LOW)}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"hyper-parameter {key} needs a number, got {value!r}") from None


def parse_args_options(text: str) -> TrainOptions:
    tokens = shlex.split(text or "")
    for token in tokens:
        flag = token.split("=", 1)[0]
        if flag in REFUSED:
            raise ConfigError(f"config key 'args_options' = {text!r}: {flag} cannot be used here ({REFUSED[flag]})")
    parser = _Parser(prog="args_options", add_help=False, allow_abbrev=False)
    parser.add_argument("--cos-lr", action="store_true")
    parser.add_argument("--optimizer", choices=["SGD", "Adam", "AdamW"], default="SGD")
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--multi-scale", action="store_true")
    parser.add_argument("--single-cls", action="store_true")
    parser.add_argument("--rect", action="store_true")
    parser.add_argument("--cache", nargs="?", const="ram", choices=["ram", "disk"], default=None)
    parser.add_argument("--freeze", type=int, nargs="+", default=[0])
    parser.add_argument("--patience", type=int, default=100)
    parser.add_argument("--hyp", type=_hyp_item, nargs="+", default=[])
    parser.add_argument("--noautoanchor", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-weights", action="store_true")
    parser.add_argument("--exist-ok", action="store_true")  # harmless: outputs always go to /out
    args, unknown = parser.parse_known_args(tokens)
    if unknown:
        raise ConfigError(f"config key 'args_options' = {text!r}: unknown {' '.join(unknown)}; accepted: --cos-lr, "
                          "--optimizer, --label-smoothing, --multi-scale, --single-cls, --rect, --cache, --freeze, "
                          "--patience, --hyp KEY=VALUE, --noautoanchor, --seed, --image-weights, --exist-ok")
    if not 0 <= args.label_smoothing < 1:
        raise ConfigError(f"config key 'args_options': --label-smoothing {args.label_smoothing} must be in [0, 1)")
    if args.patience < 1 or min(args.freeze) < 0:
        raise ConfigError(f"config key 'args_options' = {text!r}: --patience must be >= 1 and --freeze >= 0")
    if args.image_weights and args.rect:
        raise ConfigError(f"config key 'args_options' = {text!r}: --image-weights draws shuffled batches, --rect "
                          "needs ordered ones; use one of them")
    if not 0 <= args.seed < 2 ** 32:
        raise ConfigError(f"config key 'args_options': --seed {args.seed} must be in [0, 2^32)")
    hyp = dict(SCRATCH_LOW, **dict(args.hyp))
    for key, value in hyp.items():
        if not in_range(key, value):
            raise ConfigError(f"config key 'args_options': --hyp {key}={value:g} is outside {describe_range(key)}")
    for unsupported in ("mixup", "copy_paste"):
        if hyp[unsupported]:
            raise ConfigError(f"config key 'args_options': --hyp {unsupported}={hyp[unsupported]} is not supported "
                              "by this executor yet (keep it 0)")
    hyp["label_smoothing"] = args.label_smoothing  # its one owner, as in YOLOv5
    freeze = args.freeze[0] if len(args.freeze) == 1 else max(args.freeze) + 1
    return TrainOptions(args.cos_lr, args.optimizer, args.multi_scale, args.single_cls,
                        args.rect, args.cache, freeze, args.patience, hyp, not args.noautoanchor, args.seed,
                        args.image_weights)
