"""Mining and inference tasks: every candidate in, result.tsv and infer-result.json out.

When both are asked for, one forward pass per image feeds both the mining score and the predictions (CALD adds
its augmented passes). Progress covers that shared pass from 0 to 1. With several GPUs each process takes every
world-th candidate, and rank 0 gathers the per-image results (a collective, no temporary files) and writes.
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from utils.checkpoint import Checkpoint, CheckpointError, build_model
from utils.data.letterboxed import LetterboxedImages, collate
from utils.data.loader_workers import init_loader_worker
from utils.inference import detect, in_original_pixels, make_detector
from utils.progress import ProgressLine
from utils.ranks import rank_and_world
from ymir.context import TaskContext
from ymir.dataset import read_candidates
from ymir.errors import ConfigError, DatasetError, ModelError
from ymir.mining import UNREADABLE_SCORE
from ymir.mining.diverse import Evidence, recorded_class_ap
from ymir.mining.labelled_looks import unpack as unpack_looks
from ymir.mining.registry import ALGORITHMS, GatheredScores, ScorerInputs, make_scorer, rank_scores
from ymir.mining.report import RankedImage, RankingRule, thumbnail_looks, write_report
from ymir.results import Detection, write_infer_result, write_mining_result
from ymir.task_processes import run_in_processes
from ymir.tasks import fitted_image_size, prediction_image_size
from ymir.weights import load_checkpoint, resolve_class_names

LOG = logging.getLogger(__name__)


@dataclass
class ImageResult:
    """What one candidate gives: its mining score and its boxes in original pixels (or why it was unreadable)."""
    index: int
    score: float
    detections: List[Detection]
    size: Tuple[int, int]  # width, height
    error: Optional[str] = None
    look: Optional[np.ndarray] = None  # for the mining report's near-duplicates (ymir.mining.report.thumbnail_looks)
    evidence: Optional[Evidence] = None  # for algorithms that rank the whole pool at once (diverse)


def check_distinct_names(candidates: Sequence[Tuple[str, Path]]) -> None:
    """infer-result.json keys each image by its file name (YMIR's assets are named by their content's hash): two
    candidates of one name in different folders would become one entry. Raises DatasetError naming them."""
    folders: Dict[str, List[str]] = {}
    for raw, _ in candidates:
        folders.setdefault(Path(raw).name, []).append(raw)
    clashes = [paths for paths in folders.values() if len(paths) > 1]
    if clashes:
        raise DatasetError(f"{len(clashes)} file name(s) are shared by candidates in different folders, e.g. "
                           f"{clashes[0][:3]}; infer-result.json keys images by file name: give each image its own "
                           "name (YMIR names assets by their hash)")


def run_mining_and_inference(ctx: TaskContext) -> None:
    env, config = ctx.env, ctx.config
    if env.candidate_index_file is None:
        raise ConfigError("env.yaml names no candidate_index_file for a mining or inference task")
    candidates = read_candidates(env.candidate_index_file, ctx.mapper)
    if config.infer is not None:
        check_distinct_names(candidates)
    if config.mining and not ALGORITHMS[config.mining.mining_algorithm].needs_model and config.infer is None:
        if not ctx.nodes.is_first:  # one process ranks the pool without a model: the first node's
            LOG.info("%s: the first node ranks the pool; nothing to do here", ctx.nodes.describe())
            return
        scorer = make_scorer(ScorerInputs(config.mining, len(candidates), None, 0, None))  # scores the whole pool
        order = np.argsort(-np.asarray(scorer.scores, dtype=np.float64), kind="stable")
        write_mining_result(env.output.mining_result_file,
                            [(candidates[i][0], float(scorer.scores[i])) for i in order])
        write_report(env.output.mining_report_file, env.output.mining_report_picture,
                     [RankedImage(candidates[i][1], float(scorer.scores[i]), True) for i in order],
                     list(config.platform.class_names), RankingRule(config.mining.mining_algorithm))
        return
    run_in_processes(ctx, datetime.timedelta(minutes=30), lambda device: _predict(ctx, candidates, device))


def _predict(ctx: TaskContext, candidates: Sequence[Tuple[str, object]], device: torch.device) -> None:
    """Every process scores its shard; rank 0 gathers the shards and writes the results."""
    config, env = ctx.config, ctx.env
    rank, world = rank_and_world()
    if rank == 0:
        LOG.info("%d candidate images; %s%s", len(candidates), ", ".join(
            ([f"mining ({config.mining.mining_algorithm})"] if config.mining else [])
            + (["inference"] if config.infer else [])), f"; sharded over {world} processes" if world > 1 else "")
    ckpt = load_checkpoint(config.platform.model_params_path, env.models_dir)
    class_names = resolve_class_names(config.platform.class_names, ckpt)
    results, img_size = _predict_shard(ctx, candidates, ckpt, device)
    if world > 1:
        gathered: List[Optional[List[ImageResult]]] = [None] * world
        dist.all_gather_object(gathered, results)
        results = [r for shard in gathered for r in shard]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if rank == 0:
        _write_results(ctx, candidates, sorted(results, key=lambda r: r.index), class_names, ckpt, img_size)


def _predict_shard(ctx: TaskContext, candidates: Sequence[Tuple[str, object]], ckpt,
                   device) -> Tuple[List[ImageResult], int]:
    """This process's share of the candidates (all of them in a single process), in index order, and the image
    size the model ran at."""
    config = ctx.config
    settings = config.mining or config.infer
    rank, world = rank_and_world()
    try:
        model = build_model(ckpt)
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    img_size = fitted_image_size(model, prediction_image_size(settings.img_size, ckpt.meta.get("img_size"),
                                                              settings.force_img_size))
    algorithm = ALGORITHMS[config.mining.mining_algorithm] if config.mining else None
    detector = make_detector(model, device, img_size, features=algorithm is not None and algorithm.needs_features)
    histogram = ckpt.meta.get("class_histogram")
    scorer = make_scorer(ScorerInputs(config.mining, len(candidates), detector, ckpt.nc, np.asarray(
        histogram, dtype=np.float64) if histogram else None, model.detect.na)) if config.mining else None
    dataset = LetterboxedImages([path for _, path in candidates], img_size)
    shard = Subset(dataset, range(rank, len(candidates), world)) if world > 1 else dataset
    workers = min(settings.num_workers_per_gpu, os.cpu_count() or 1)
    loader = DataLoader(shard, batch_size=settings.batch_size_per_gpu, shuffle=False, num_workers=workers,
                        collate_fn=collate, pin_memory=settings.pin_memory and device.type == "cuda",
                        worker_init_fn=init_loader_worker)
    results: List[ImageResult] = []
    started = time.perf_counter()
    progress = ctx.monitor.span(0.0, 0.99)  # only rank 0 writes; its shard stands for the whole
    line = ProgressLine(f"rank {rank}: images" if world > 1 else "images", len(shard))
    for images, metas in loader:
        with torch.inference_mode():  # no autograd bookkeeping for the forward passes nor the scores
            out = detect(detector, images, metas, settings.conf_thres, settings.iou_thres, settings.max_det,
                         floor=scorer.nms_floor if scorer else None)
            keys = [candidates[m.index][0] for m in metas]
            batch_scores, evidence = scorer.score_and_describe(images, out, metas, keys) if scorer else (
                [0.0] * len(metas), [None] * len(metas))
            looks = thumbnail_looks(images) if scorer else [None] * len(metas)
        for b, meta in enumerate(metas):
            if meta.error is not None:
                results.append(ImageResult(meta.index, UNREADABLE_SCORE, [], (0, 0), meta.error))
                continue
            dets = in_original_pixels(out.detections[b], meta)
            results.append(ImageResult(meta.index, float(batch_scores[b]),
                                       [Detection(*map(float, row[:5]), int(row[5])) for row in dets],
                                       (meta.shape[1], meta.shape[0]), look=looks[b], evidence=evidence[b]))
        progress(len(results) / max(1, len(shard)))
        line.update(len(results), len(metas))
    elapsed = time.perf_counter() - started
    LOG.info("rank %d: %d images in %.2f s (%.2f images/s)", rank, len(results), elapsed,
             len(results) / max(elapsed, 1e-9))
    return results, img_size


def _write_results(ctx: TaskContext, candidates, results: List[ImageResult], class_names: List[str],
                   ckpt: Checkpoint, img_size: int) -> None:
    env, config = ctx.env, ctx.config
    unreadable = [(candidates[r.index][0], r.error) for r in results if r.error is not None]
    if unreadable and len(unreadable) == len(results):
        raise DatasetError(f"none of the {len(results)} candidate images could be read (first: {unreadable[0][0]}: "
                           f"{unreadable[0][1]})")
    if unreadable:
        LOG.warning("%d candidate image(s) could not be read; they get the lowest score and no prediction:\n%s",
                    len(unreadable), "\n".join(f"  {path}: {reason}" for path, reason in unreadable[:50]))
    report = _write_ranking(ctx, candidates, results, class_names, ckpt, img_size) if config.mining else None
    if config.infer:
        predictions: Dict[str, Tuple[List[Detection], Tuple[int, int]]] = {
            candidates[r.index][0]: (r.detections, r.size) for r in results}
        written = write_infer_result(env.output.infer_result_file, predictions, class_names, env.protocol_version)
        LOG.info("inference result written: %s (%d boxes)", env.output.infer_result_file, written)
    if report is not None:  # last: what the platform reads is written whatever becomes of the report
        write_report(env.output.mining_report_file, env.output.mining_report_picture, *report)


def cannot_rank_reason(algorithm: str, scores: np.ndarray, undetected: np.ndarray,
                       evidence: Sequence[Optional[Evidence]] = ()) -> Optional[str]:
    """Why the readable candidates' scores say nothing (all equal, for an algorithm that needs the model), or None.
    An algorithm that orders by more than its scores (diverse's walk over the boxes it saw) can still rank tied
    scores while it saw boxes."""
    if not ALGORITHMS[algorithm].needs_model or len(scores) < 2 or not np.all(scores == scores[0]):
        return None
    if any(e is not None and len(e.rows) for e in evidence):
        return None
    if undetected.all():
        return f"all {len(scores)} readable images scored {scores[0]:.6g}: the model detects nothing in the whole pool"
    return f"all {len(scores)} readable images scored {scores[0]:.6g}: the model is equally unsure of each"


def _write_ranking(ctx: TaskContext, candidates, results: List[ImageResult], class_names: List[str],
                   ckpt: Checkpoint, img_size: int) -> tuple:
    """result.tsv, highest score first; returns what its report is made of. Where the scores cannot rank, the
    readable candidates are listed in a seeded random order (as random mining would list them), and the log, the
    report and monitor.txt's message say so."""
    env, mining = ctx.env, ctx.config.mining
    scores = np.array([r.score for r in results])
    readable = np.array([r.error is None for r in results])
    undetected = np.array([not r.detections for r in results])
    evidence = [r.evidence for r, ok in zip(results, readable) if ok]
    reason = cannot_rank_reason(mining.mining_algorithm, scores[readable], undetected[readable], evidence)
    if reason:  # the scores stay tied: the sort in write_mining_result keeps the drawn order
        LOG.warning("mining cannot rank these candidates: %s; they are listed in a random order drawn from seed %d, "
                    "as random mining would list them", reason, mining.seed)
        ctx.monitor.note(f"mining cannot rank: {reason}; listed in a seeded random order")
        drawn = np.random.default_rng(mining.seed).permutation(np.flatnonzero(readable))
        order = np.concatenate([drawn, np.flatnonzero(~readable)])
    else:
        labelled = unpack_looks(ckpt.meta.get("labelled_looks"), ckpt.nc, img_size, mining.iou_thres,
                                mining.max_det) if ALGORITHMS[mining.mining_algorithm].needs_features else None
        if labelled is not None:
            LOG.info("the walk starts from %d labelled images the model describes (its labelled looks)",
                     len(labelled))
        scores[readable] = rank_scores(mining, GatheredScores(
            scores[readable], undetected[readable], evidence, ckpt.nc,
            recorded_class_ap(ckpt.meta.get("class_ap50"), ckpt.nc), labelled))
        order = np.argsort(-scores, kind="stable")
    write_mining_result(env.output.mining_result_file,
                        [(candidates[results[i].index][0], float(scores[i])) for i in order])
    LOG.info("mining result written: %s", env.output.mining_result_file)
    ranked = [RankedImage(candidates[results[i].index][1], float(scores[i]), bool(readable[i]),
                          _boxes_array(results[i].detections), results[i].look) for i in order]
    return ranked, class_names, RankingRule(mining.mining_algorithm, reason, mining.seed)


def _boxes_array(detections: Sequence[Detection]) -> np.ndarray:
    rows = [(d.x1, d.y1, d.x2, d.y2, d.score, d.class_id) for d in detections]
    return np.array(rows, dtype=np.float64).reshape(-1, 6)
