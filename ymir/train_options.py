"""`args_options`: YOLOv5 training flags accepted in the template's free-text field, parsed without a shell."""
from __future__ import annotations

import argparse
import shlex
from typing import Any, Dict, List

from utils.hyperparameters import describe_range, in_range
from utils.train_settings import flags
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


HARMLESS = {"--exist-ok": "outputs always go to /out"}  # accepted and ignored, as the reference template has it


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print usage and exit
        raise ConfigError(f"config key 'args_options': {message}")


def _parser() -> _Parser:
    """The flags TrainSettings declares, and the harmless ones."""
    parser = _Parser(prog="args_options", add_help=False, allow_abbrev=False)
    for name, flag in flags():
        parser.add_argument(flag.name, dest=name, **flag.argparse)
    for name in HARMLESS:
        parser.add_argument(name, action="store_true")
    return parser


def accepted_flags() -> List[str]:
    return [flag.usage for _, flag in flags()] + list(HARMLESS)


def parse_args_options(text: str) -> Dict[str, Any]:
    """The settings `args_options` gives (every flag setting of TrainSettings, at its default where not given),
    checked."""
    tokens = shlex.split(text or "")
    for token in tokens:
        flag = token.split("=", 1)[0]
        if flag in REFUSED:
            raise ConfigError(f"config key 'args_options' = {text!r}: {flag} cannot be used here ({REFUSED[flag]})")
    args, unknown = _parser().parse_known_args(tokens)
    if unknown:
        raise ConfigError(f"config key 'args_options' = {text!r}: unknown {' '.join(unknown)}; accepted: "
                          f"{', '.join(accepted_flags())}")
    values = {name: flag.to_setting(getattr(args, name)) for name, flag in flags()}
    _check(text, values)
    return values


def _check(text: str, values: Dict[str, Any]) -> None:
    if not in_range("label_smoothing", values["label_smoothing"]):
        raise ConfigError(f"config key 'args_options': --label-smoothing {values['label_smoothing']:g} is outside "
                          f"{describe_range('label_smoothing')}")
    if values["patience"] < 1 or values["freeze"] < 0:
        raise ConfigError(f"config key 'args_options' = {text!r}: --patience must be >= 1 and --freeze >= 0")
    if values["image_weights"] and values["rect"]:
        raise ConfigError(f"config key 'args_options' = {text!r}: --image-weights draws shuffled batches, --rect "
                          "needs ordered ones; use one of them")
    if not 0 <= values["seed"] < 2 ** 32:
        raise ConfigError(f"config key 'args_options': --seed {values['seed']} must be in [0, 2^32)")
    hyp = values["hyp"]
    for key, value in hyp.items():
        if not in_range(key, value):
            raise ConfigError(f"config key 'args_options': --hyp {key}={value:g} is outside {describe_range(key)}")
    for unsupported in ("mixup", "copy_paste"):
        if hyp[unsupported]:
            raise ConfigError(f"config key 'args_options': --hyp {unsupported}={hyp[unsupported]} is not supported "
                              "by this executor yet (keep it 0)")
