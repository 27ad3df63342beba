"""Choosing and loading the model file a task was given (`pretrained_model_params` / `model_params_path`)."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional, Sequence

from utils.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from ymir.errors import ModelError

LOG = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".pt", ".pth")
PLACEHOLDER_NAME = re.compile(r"(class)?\d+")  # what YOLOv5 and we call classes a file gives no names for


def choose_weights(listed: Sequence[Path], models_dir: Optional[Path]) -> Optional[Path]:
    """The best weights file: among the listed files, else anything under models_dir (flat or per stage).

    A file whose name contains 'best' wins, then the most recently modified. None when there is none.
    """
    files = [p for p in listed if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    if not files and models_dir is not None and models_dir.is_dir():
        files = sorted(p for p in models_dir.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
        if files:
            LOG.warning("no weights file (%s) among the listed model files; using what is under %s: %s",
                        "/".join(WEIGHT_SUFFIXES), models_dir, [str(p) for p in files])
    if not files:
        return None
    best = [p for p in files if "best" in p.stem.lower()]
    return max(best or files, key=lambda p: p.stat().st_mtime)


def describe(listed: Sequence[Path], models_dir: Optional[Path]) -> str:
    present: List[str] = []
    if models_dir is not None and models_dir.is_dir():
        present = sorted(str(p.relative_to(models_dir)) for p in models_dir.rglob("*") if p.is_file())
    return f"listed {[str(p) for p in listed]}; found under {models_dir}: {present[:20] or 'nothing'}"


def load_checkpoint(listed: Sequence[Path], models_dir: Optional[Path]) -> Checkpoint:
    """Read the chosen weights; a missing, unreadable or refused file is a ModelError (300004)."""
    path = choose_weights(listed, models_dir)
    if path is None:
        raise ModelError(f"no model weights (.pt) to use: {describe(listed, models_dir)}")
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    LOG.info("model weights: %s (%s, %d classes)", path, ckpt.source, ckpt.nc)
    return ckpt


def resolve_class_names(config_names: Sequence[str], ckpt: Checkpoint) -> List[str]:
    """config class_names (the platform's, from the model's training) when they fit the model, else the model's."""
    if not config_names:
        return list(ckpt.names)
    ours, theirs = list(config_names), list(ckpt.names)
    if len(ours) != ckpt.nc:
        raise ModelError(f"the model predicts {ckpt.nc} classes {theirs} but config class_names has {len(ours)}: "
                         f"{ours}")
    lowered, model_lowered = [n.lower() for n in ours], [n.lower() for n in theirs]
    if lowered == model_lowered:
        return ours
    if sorted(lowered) == sorted(model_lowered):
        LOG.warning("config class_names %s name the model's classes in another order than it was trained with "
                    "(%s): predictions are labelled by the config's order", ours, theirs)
    elif not set(lowered) & set(model_lowered) and not all(PLACEHOLDER_NAME.fullmatch(n) for n in theirs):
        raise ModelError(f"config class_names {ours} share no name with the classes the model was trained on "
                         f"{theirs}: give the model's names, in its order")
    else:
        differ = [f"{a!r} (model: {b!r})" for a, b in zip(ours, theirs) if a.lower() != b.lower()]
        LOG.warning("config class_names differ from the model's in %d place(s): %s; predictions are labelled with "
                    "the config's names, class by class in the model's order (model: %s)", len(differ),
                    ", ".join(differ), theirs)
    return ours
