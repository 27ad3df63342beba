"""The YOLOv5 training loop: one process, or one rank of a DistributedDataParallel (torchrun) run.

The caller owns the outcome: after each epoch `on_epoch` receives the EMA model and the validation metrics (on
rank 0) and decides what to save; `on_progress` receives the fraction of all work done.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler

from models.yolo import DetectionModel
from utils.autoanchor import check_anchors
from utils.hyperparameters import NOMINAL_BATCH
from utils.image_weights import ImageWeightedSampler, class_weights, epoch_class_weights, image_weights
from utils.loss import YoloLoss
from utils.metrics import DetectionMetrics
from utils.optim import ModelEMA, build_optimizer, build_scheduler, lr_lambda, unwrap, warmup, warmup_accumulation
from utils.progress import ProgressLine
from utils.train_data import TrainImages, ValImages, collate_train, collate_val
from utils.validate import summary_line, validate

LOG = logging.getLogger(__name__)
MIN_WARMUP_STEPS = 100
MAX_GRAD_NORM = 10.0


class NonFiniteLossError(Exception):
    """The loss became NaN or infinite."""


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int  # per process
    img_size: int
    hyp: Dict[str, float]
    device: torch.device
    optimizer: str = "SGD"
    cos_lr: bool = False
    multi_scale: bool = False
    freeze: int = 0
    patience: int = 100
    seed: int = 0
    workers: int = 0
    sync_bn: bool = False
    single_cls: bool = False
    rect: bool = False
    autoanchor: bool = True
    cache: bool = False
    image_weights: bool = False


@dataclass
class EpochReport:
    epoch: int  # 0-based
    losses: List[float]  # box, obj, cls: mean per batch
    lrs: List[float]
    metrics: DetectionMetrics
    best: bool
    seconds: float
    confusion: Optional[np.ndarray] = None
    examples: list = field(default_factory=list)
    train_examples: list = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def grad_scaler(enabled: bool):
    """AMP's loss scaler for CUDA (torch.amp.GradScaler, torch.cuda.amp.GradScaler before torch 2.3); disabled, a
    pass-through."""
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def distributed() -> tuple:
    """(rank, world size) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def train(model: DetectionModel, train_samples: Sequence, val_samples: Sequence, s: TrainSettings,
          on_epoch: Callable[[EpochReport, DetectionMetrics, nn.Module], bool],
          on_progress: Callable[[float], None] = lambda f: None) -> None:
    """Train `model` in place. `on_epoch(report, best, ema_model)` runs on rank 0 and returns False to stop."""
    rank, world = distributed()
    seed_everything(s.seed + rank)
    device, hyp = s.device, dict(s.hyp)
    nc, nl = model.nc, model.detect.nl
    gs = model.image_size_step
    hyp["box"] *= 3 / nl  # loss gains scale with levels, classes and image size
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (s.img_size / 640) ** 2 * 3 / nl
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f"model.{i}.") for i in range(s.freeze)))
    if s.autoanchor and rank == 0:
        check_anchors(model.detect, train_samples, s.img_size, hyp["anchor_t"], seed=s.seed)
    # channels-last (NHWC) weights and images: 1.1-1.2x faster training steps on CPU (oneDNN) and on GPU (cuDNN)
    model.to(device).to(memory_format=torch.channels_last)
    if world > 1:
        for buffer_holder in (model.detect,):
            dist.broadcast(buffer_holder.anchors, 0)  # AutoAnchor ran on rank 0 only

    train_set = TrainImages(train_samples, s.img_size, hyp, augment=not s.rect, seed=s.seed, single_cls=s.single_cls,
                            rect=s.rect, batch_size=s.batch_size, stride=gs)
    if s.cache:
        train_set.images.cache = {}
    if s.image_weights:
        sampler = ImageWeightedSampler(len(train_set), s.seed, rank, world)
        base_class_weights = class_weights(train_set.samples, nc)
        per_class_map = None
    else:
        sampler = DistributedSampler(train_set, shuffle=True, seed=s.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(s.seed + rank)
    train_loader = DataLoader(train_set, batch_size=s.batch_size, shuffle=sampler is None and not s.rect,
                              sampler=sampler, num_workers=s.workers, collate_fn=collate_train, generator=generator,
                              pin_memory=device.type == "cuda", drop_last=False,
                              persistent_workers=False)
    val_loader = DataLoader(ValImages(val_samples, s.img_size, s.batch_size * 2, gs, s.single_cls),
                            batch_size=s.batch_size * 2, shuffle=False, num_workers=s.workers,
                            collate_fn=collate_val) if rank == 0 else None

    accumulate = max(round(NOMINAL_BATCH / (s.batch_size * world)), 1)
    hyp["weight_decay"] *= s.batch_size * world * accumulate / NOMINAL_BATCH
    optimizer = build_optimizer(model, s.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    lf = lr_lambda(s.epochs, hyp["lrf"], s.cos_lr)
    scheduler = build_scheduler(optimizer, lf)
    if world > 1 and s.sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = ModelEMA(model) if rank == 0 else None
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
        if world > 1 else model
    loss_fn = YoloLoss(unwrap(net).detect, hyp)
    amp = device.type == "cuda"
    scaler = grad_scaler(amp)

    nb = len(train_loader)
    # at least 100 warmup batches, as YOLOv5; warmup_epochs=0 turns warmup off
    warmup_steps = max(round(hyp["warmup_epochs"] * nb), MIN_WARMUP_STEPS) if hyp["warmup_epochs"] > 0 else -1
    if warmup_steps < 0 and nb * s.epochs < accumulate:
        LOG.warning("gradients accumulate over %d batches (nominal batch %d) before each optimizer step, and this "
                    "run has %d batches in all: the weights will not change. Train more epochs, raise "
                    "batch_size_per_gpu, or keep warmup on (it steps every batch at first)", accumulate,
                    NOMINAL_BATCH, nb * s.epochs)
    val_batches = len(val_loader) if val_loader is not None else 0
    work_per_epoch = nb + val_batches
    last_step, best = -1, None
    best_epoch, stop = 0, False
    run_started = time.time()
    for epoch in range(s.epochs):
        started = time.time()
        net.train()
        train_set.epoch = epoch
        if s.image_weights:
            weights = torch.from_numpy(image_weights(train_set.samples,
                                                     epoch_class_weights(base_class_weights, per_class_map)))
            if world > 1:  # rank 0 validated; every rank draws from its weights
                weights = weights.to(device)
                dist.broadcast(weights, 0)
            sampler.set_weights(weights.cpu().numpy())
        if sampler is not None:
            sampler.set_epoch(epoch)
        mean_losses = torch.zeros(3, device=device)
        optimizer.zero_grad()
        train_examples = []
        line = ProgressLine(f"epoch {epoch + 1}/{s.epochs}: batch", nb) if rank == 0 else None
        for i, (images, targets) in enumerate(train_loader):
            step = i + nb * epoch
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last).float() / 255
            if step <= warmup_steps:
                accumulate = warmup_accumulation(step, warmup_steps, NOMINAL_BATCH, s.batch_size * world)
                warmup(optimizer, step, warmup_steps, epoch, lf, hyp)
            if s.multi_scale:
                size = random.randrange(int(s.img_size * 0.5), int(s.img_size * 1.5) + gs) // gs * gs
                factor = size / max(images.shape[2:])
                if factor != 1:
                    new_shape = [math.ceil(x * factor / gs) * gs for x in images.shape[2:]]
                    images = nn.functional.interpolate(images, size=new_shape, mode="bilinear", align_corners=False)
            if epoch == 0 and i < 2 and rank == 0:
                train_examples.append((images[:4].detach().cpu(), targets.clone()))
            with torch.autocast(device_type=device.type, enabled=amp):
                preds = net(images)
                loss, items = loss_fn(preds, targets.to(device))
                loss = loss * world
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"the training loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}")
            scaler.scale(loss).backward()
            if step - last_step >= accumulate:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), max_norm=MAX_GRAD_NORM)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
                if ema:
                    ema.update(net)
                last_step = step
            mean_losses = (mean_losses * i + items) / (i + 1)
            on_progress((epoch * work_per_epoch + i + 1) / (s.epochs * work_per_epoch))
            if line is not None:
                done = (epoch * nb + i + 1) / (s.epochs * nb)
                line.update(i + 1, images.shape[0] * world,
                            detail=lambda m=mean_losses: "loss box {:.4f} obj {:.4f} cls {:.4f}".format(*m.tolist()),
                            eta_total=lambda d=done: (time.time() - run_started) / d * (1 - d))
        lrs = [g["lr"] for g in optimizer.param_groups]
        with warnings.catch_warnings():  # an epoch without an optimizer step (gradient accumulation) is expected
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            scheduler.step()
        if rank == 0:
            def val_progress(f, _e=epoch):
                on_progress((_e * work_per_epoch + nb + f * val_batches) / (s.epochs * work_per_epoch))

            half = device.type == "cuda"
            eval_model = ema.ema.half() if half else ema.ema
            metrics, confusion, examples = validate(eval_model, val_loader, device, nc, half=half,
                                                    progress=val_progress, keep_predictions=4 if epoch == 0 or
                                                    epoch == s.epochs - 1 else 0)
            ema.ema.float()
            if s.image_weights:
                per_class_map = np.full(nc, metrics.map50_95)
                if metrics.per_class is not None:
                    per_class_map[metrics.per_class.classes.astype(int)] = metrics.per_class.ap.mean(1)
            improved = best is None or metrics.fitness > best.fitness
            if improved:
                best, best_epoch = metrics, epoch
            LOG.info("epoch %d/%d  loss box %.4f obj %.4f cls %.4f  %s%s  (%.1fs)", epoch + 1, s.epochs,
                     *mean_losses.tolist(), summary_line(metrics), "  (best)" if improved else "",
                     time.time() - started)
            report = EpochReport(epoch, mean_losses.tolist(), lrs, metrics, improved, time.time() - started,
                                 confusion.matrix, examples, train_examples)
            keep_going = on_epoch(report, best, ema.ema)
            if epoch - best_epoch >= s.patience:
                LOG.info("early stop: no better mAP for %d epochs (best at epoch %d)", s.patience, best_epoch + 1)
                keep_going = False
            stop = not keep_going
        if world > 1:
            flag = torch.tensor([1 if stop else 0], device=device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        if stop:
            break
