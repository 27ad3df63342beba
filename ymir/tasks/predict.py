"""Mining and inference tasks: every candidate in, result.tsv and infer-result.json out.

When both are asked for, one forward pass per image feeds both the mining score and the predictions (CALD adds
its augmented passes). Progress covers that shared pass from 0 to 1.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils.checkpoint import build_model
from utils.inference import Detector, LetterboxedImages, collate, detect, in_original_pixels
from ymir.context import TaskContext
from ymir.dataset import read_candidates
from ymir.devices import select_device
from ymir.errors import ConfigError
from ymir.mining import UNREADABLE_SCORE
from ymir.mining.scorers import RandomScorer, make_scorer
from ymir.results import Detection, write_infer_result, write_mining_result
from ymir.weights import load_checkpoint, resolve_class_names

LOG = logging.getLogger(__name__)


def run_mining_and_inference(ctx: TaskContext) -> None:
    env, config = ctx.env, ctx.config
    if env.candidate_index_file is None:
        raise ConfigError("env.yaml names no candidate_index_file for a mining or inference task")
    candidates = read_candidates(env.candidate_index_file, ctx.mapper)
    settings = config.mining or config.infer
    LOG.info("%d candidate images; %s", len(candidates), ", ".join(
        ([f"mining ({config.mining.mining_algorithm})"] if config.mining else []) + (["inference"] if config.infer
                                                                                     else [])))
    if config.mining and config.mining.mining_algorithm == "random" and config.infer is None:
        scorer = RandomScorer(len(candidates), config.mining.seed)
        write_mining_result(env.output.mining_result_file,
                            [(raw, float(s)) for (raw, _), s in zip(candidates, scorer.scores)])
        return

    ckpt = load_checkpoint(config.platform.model_params_path, env.models_dir)
    class_names = resolve_class_names(config.platform.class_names, ckpt)
    device = select_device(config.platform.gpu_ids)
    detector = Detector(build_model(ckpt), device)
    histogram = ckpt.meta.get("class_histogram")
    scorer = make_scorer(config.mining, len(candidates), detector, ckpt.nc,
                         np.asarray(histogram, dtype=np.float64) if histogram else None) if config.mining else None

    dataset = LetterboxedImages([path for _, path in candidates], settings.img_size)
    workers = min(settings.num_workers_per_gpu, os.cpu_count() or 1)
    loader = DataLoader(dataset, batch_size=settings.batch_size_per_gpu, shuffle=False, num_workers=workers,
                        collate_fn=collate, pin_memory=settings.pin_memory and device.type == "cuda")
    scores: List[float] = [UNREADABLE_SCORE] * len(candidates)
    predictions: Dict[str, Tuple[List[Detection], Tuple[int, int]]] = {}
    unreadable: List[Tuple[str, str]] = []
    progress = ctx.monitor.span(0.0, 0.99)
    done = 0
    for images, metas in loader:
        out = detect(detector, images, metas, settings.conf_thres, settings.iou_thres, settings.max_det)
        keys = [candidates[m.index][0] for m in metas]
        batch_scores = scorer.score_batch(images, out, metas, keys) if scorer else [0.0] * len(metas)
        for b, meta in enumerate(metas):
            raw_path = keys[b]
            if meta.error is not None:
                unreadable.append((raw_path, meta.error))
                predictions[raw_path] = ([], (0, 0))
                continue
            scores[meta.index] = float(batch_scores[b])
            dets = in_original_pixels(out.detections[b], meta)
            predictions[raw_path] = ([Detection(*map(float, row[:5]), int(row[5])) for row in dets],
                                     (meta.shape[1], meta.shape[0]))
        done += len(metas)
        progress(done / len(candidates))
    if unreadable:
        LOG.warning("%d candidate image(s) could not be read; they get the lowest score and no prediction:\n%s",
                    len(unreadable), "\n".join(f"  {path}: {reason}" for path, reason in unreadable[:50]))
    if config.mining:
        write_mining_result(env.output.mining_result_file,
                            [(raw, scores[i]) for i, (raw, _) in enumerate(candidates)])
        LOG.info("mining result written: %s", env.output.mining_result_file)
    if config.infer:
        ordered = {raw: predictions[raw] for raw, _ in candidates}
        write_infer_result(env.output.infer_result_file, ordered, class_names, env.protocol_version)
        LOG.info("inference result written: %s (%d boxes)", env.output.infer_result_file,
                 sum(len(p[0]) for p in ordered.values()))
    if device.type == "cuda":
        torch.cuda.empty_cache()
