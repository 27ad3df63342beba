"""Choosing and loading the model file a task was given (`pretrained_model_params` / `model_params_path`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

from utils.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from ymir.errors import ModelError

LOG = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".pt", ".pth")


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
    if config_names:
        if len(config_names) != ckpt.nc:
            raise ModelError(f"the model predicts {ckpt.nc} classes but config class_names has {len(config_names)}: "
                             f"{list(config_names)}")
        if [n.lower() for n in config_names] != [n.lower() for n in ckpt.names] and \
                sorted(n.lower() for n in config_names) == sorted(n.lower() for n in ckpt.names):
            LOG.warning("config class_names %s name the model's classes in another order than it was trained with "
                        "(%s): predictions are labelled by the config's order", list(config_names), list(ckpt.names))
        return list(config_names)
    return list(ckpt.names)
