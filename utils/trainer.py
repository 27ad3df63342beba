"""The YOLOv5 training loop: one process, or one rank of a DistributedDataParallel (torchrun) run.

The caller owns the outcome: after each epoch `on_epoch` receives the EMA model and the validation metrics (on
rank 0) and decides what to save; `on_progress` receives the fraction of all work done.
"""
from __future__ import annotations

import logging
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from models.yolo import DetectionModel
from utils.autoanchor import check_anchors
from utils.data.image_cache import ImageCache
from utils.data.image_weights import ImageWeightedSampler, class_weights, epoch_class_weights, image_weights
from utils.data.loader_workers import init_loader_worker
from utils.data.sample import Sample
from utils.data.train_data import EpochIndices, EpochShuffle, TrainImages, ValImages, collate_train, collate_val
from utils.ema import ModelEMA
from utils.hyperparameters import NOMINAL_BATCH
from utils.loss import YoloLoss
from utils.metrics import DetectionMetrics
from utils.optim import build_optimizer, build_scheduler, lr_lambda, warmup, warmup_accumulation
from utils.progress import ProgressLine, duration
from utils.ranks import rank_and_world, unwrap
from utils.train_settings import TrainSettings
from utils.validate import summary_line, validate

LOG = logging.getLogger(__name__)
MIN_WARMUP_STEPS = 100
MAX_GRAD_NORM = 10.0


class NonFiniteLossError(Exception):
    """The loss became NaN or infinite."""


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


def scaled_hyp(hyp: Dict[str, float], nc: int, nl: int, img_size: int) -> Dict[str, float]:
    """YOLOv5's loss gains scale with the number of levels, of classes and with the image size."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (img_size / 640) ** 2 * 3 / nl
    return hyp


def train(model: DetectionModel, train_samples: Sequence[Sample], val_samples: Sequence[Sample], s: TrainSettings,
          on_epoch: Callable[[EpochReport, DetectionMetrics, nn.Module], bool],
          on_progress: Callable[[float], None] = lambda f: None) -> None:
    """Train `model` in place. `on_epoch(report, best, ema_model)` runs on rank 0 and returns False to stop."""
    Trainer(model, s, on_epoch, on_progress).run(train_samples, val_samples)


class Trainer:
    """One training run, in the steps YOLOX names: before_train (data, optimisation, wrappers), then per epoch
    train_one_epoch (train_one_iter per batch) and after_epoch (schedule, validation, report, early stop)."""

    def __init__(self, model: DetectionModel, s: TrainSettings,
                 on_epoch: Callable[[EpochReport, DetectionMetrics, nn.Module], bool],
                 on_progress: Callable[[float], None]):
        self.model, self.s, self.on_epoch, self.on_progress = model, s, on_epoch, on_progress
        self.rank, self.world = rank_and_world()
        self.device = s.device
        self.hyp = scaled_hyp(s.training_hyp, model.nc, model.detect.nl, s.img_size)
        self.last_step, self.best, self.best_epoch = -1, None, 0
        self.caches: List[ImageCache] = []

    def run(self, train_samples: Sequence[Sample], val_samples: Sequence[Sample]) -> None:
        try:  # the image caches are closed however the run ends, set-up included (a disk cache's folder goes)
            self.before_train(train_samples, val_samples)
            for epoch in range(self.s.epochs):
                started = time.time()
                losses, lrs, examples = self.train_one_epoch(epoch)
                if self.after_epoch(epoch, losses, lrs, examples, started):
                    break
        finally:
            for cache in self.caches:
                cache.close()

    # ---- before_train -------------------------------------------------------------------------------------------

    def before_train(self, train_samples: Sequence[Sample], val_samples: Sequence[Sample]) -> None:
        s, model = self.s, self.model
        seed_everything(s.seed + self.rank)
        for name, p in model.named_parameters():
            p.requires_grad_(not any(name.startswith(f"model.{i}.") for i in range(s.freeze)))
        if s.autoanchor and self.rank == 0:
            check_anchors(model.detect, train_samples, s.img_size, self.hyp["anchor_t"], seed=s.seed)
        # channels-last (NHWC) weights and images: 1.1-1.2x faster training steps on CPU (oneDNN) and GPU (cuDNN)
        model.to(self.device).to(memory_format=torch.channels_last)
        if self.world > 1:
            dist.broadcast(model.detect.anchors, 0)  # AutoAnchor ran on rank 0 only
        self.build_loaders(train_samples, val_samples)
        self.build_optimization()
        self.wrap_model()
        self.nb = len(self.train_loader)
        # at least 100 warmup batches, as YOLOv5; warmup_epochs=0 turns warmup off
        self.warmup_steps = max(round(self.hyp["warmup_epochs"] * self.nb), MIN_WARMUP_STEPS) \
            if self.hyp["warmup_epochs"] > 0 else -1
        if self.warmup_steps < 0 and self.nb * s.epochs < self.accumulate:
            LOG.warning("gradients accumulate over %d batches (nominal batch %d) before each optimizer step, and this "
                        "run has %d batches in all: the weights will not change. Train more epochs, raise "
                        "batch_size_per_gpu, or keep warmup on (it steps every batch at first)", self.accumulate,
                        NOMINAL_BATCH, self.nb * s.epochs)
        self.val_batches = len(self.val_loader) if self.val_loader is not None else 0
        self.work_per_epoch = self.nb + self.val_batches
        self.run_started = time.time()

    def build_loaders(self, train_samples: Sequence[Sample], val_samples: Sequence[Sample]) -> None:
        s, gs = self.s, self.model.image_size_step
        self.train_set = TrainImages(train_samples, s.img_size, self.hyp, augment=not s.rect, seed=s.seed,
                                     single_cls=s.single_cls, rect=s.rect, batch_size=s.batch_size, stride=gs)
        if s.cache:
            self.train_set.images.use_cache(s.cache)
            self.caches += [self.train_set.images.cache] if self.train_set.images.cache is not None else []
        if s.image_weights:
            self.sampler = ImageWeightedSampler(len(self.train_set), s.seed, self.rank, self.world)
            self.base_class_weights = class_weights(self.train_set.samples, self.model.nc)
            self.per_class_map = None
        elif self.world > 1:
            self.sampler = DistributedSampler(self.train_set, shuffle=True, seed=s.seed)
        else:
            self.sampler = None if s.rect else EpochShuffle(len(self.train_set), s.seed)
        # workers live for the whole run (their start-up and the cache are paid once): each index travels with its
        # epoch, which seeds its augmentation
        order = self.sampler if self.sampler is not None else SequentialSampler(self.train_set)
        indices = EpochIndices(order, self.train_set)
        generator = torch.Generator().manual_seed(s.seed + self.rank)
        self.train_loader = DataLoader(self.train_set, batch_size=s.batch_size, sampler=indices,
                                       num_workers=s.workers, collate_fn=collate_train, generator=generator,
                                       pin_memory=self.device.type == "cuda", drop_last=False,
                                       persistent_workers=s.workers > 0, worker_init_fn=init_loader_worker)
        self.val_loader = self.build_val_loader(val_samples) if self.rank == 0 else None

    def build_val_loader(self, val_samples: Sequence[Sample]) -> DataLoader:
        """Rank 0's validation loader: its workers live for the whole run, as the training loader's, and `--cache`
        caches the validation images too (as YOLOv5 does)."""
        s = self.s
        val_set = ValImages(val_samples, s.img_size, s.batch_size * 2, self.model.image_size_step, s.single_cls)
        if s.cache:
            val_set.images.use_cache(s.cache, "validation")
            self.caches += [val_set.images.cache] if val_set.images.cache is not None else []
        return DataLoader(val_set, batch_size=s.batch_size * 2, shuffle=False, num_workers=s.workers,
                          collate_fn=collate_val, persistent_workers=s.workers > 0, worker_init_fn=init_loader_worker)

    def build_optimization(self) -> None:
        s, hyp = self.s, self.hyp
        self.accumulate = max(round(NOMINAL_BATCH / (s.batch_size * self.world)), 1)
        hyp["weight_decay"] *= s.batch_size * self.world * self.accumulate / NOMINAL_BATCH
        self.optimizer = build_optimizer(self.model, s.optimizer, hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
        self.lf = lr_lambda(s.epochs, hyp["lrf"], s.cos_lr)
        self.scheduler = build_scheduler(self.optimizer, self.lf)

    def wrap_model(self) -> None:
        """SyncBN and DDP across processes, the EMA on rank 0, the loss, and AMP's scaler on CUDA."""
        model, cuda = self.model, self.device.type == "cuda"
        if self.world > 1 and self.s.sync_bn and cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.ema = ModelEMA(model) if self.rank == 0 else None
        self.net = nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if cuda else None) \
            if self.world > 1 else model
        self.loss_fn = YoloLoss(unwrap(self.net).detect, self.hyp)
        self.amp = cuda
        self.scaler = grad_scaler(self.amp)

    # ---- one epoch ----------------------------------------------------------------------------------------------

    def train_one_epoch(self, epoch: int):
        """Returns the epoch's mean losses (box, obj, cls), its learning rates and a few training batches."""
        s = self.s
        self.net.train()
        self.train_set.epoch = epoch
        if s.image_weights:
            self.draw_by_image_weights()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        mean_losses = torch.zeros(3, device=self.device)
        self.optimizer.zero_grad()
        examples: list = []
        line = ProgressLine(f"epoch {epoch + 1}/{s.epochs}: batch", self.nb) if self.rank == 0 else None
        for i, (images, targets) in enumerate(self.train_loader):
            items, batch = self.train_one_iter(epoch, i, images, targets, examples)
            mean_losses = (mean_losses * i + items) / (i + 1)
            self.on_progress((epoch * self.work_per_epoch + i + 1) / (s.epochs * self.work_per_epoch))
            if line is not None:
                done = (epoch * self.nb + i + 1) / (s.epochs * self.nb)
                line.update(i + 1, batch * self.world,
                            detail=lambda m=mean_losses: "loss box {:.4f} obj {:.4f} cls {:.4f}".format(*m.tolist()),
                            eta_total=lambda d=done: (time.time() - self.run_started) / d * (1 - d))
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        with warnings.catch_warnings():  # an epoch without an optimizer step (gradient accumulation) is expected
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        return mean_losses, lrs, examples

    def draw_by_image_weights(self) -> None:
        """--image-weights: this epoch's draw follows each image's share of the classes still poorly learnt."""
        weights = torch.from_numpy(image_weights(self.train_set.samples,
                                                 epoch_class_weights(self.base_class_weights, self.per_class_map)))
        if self.world > 1:  # rank 0 validated; every rank draws from its weights
            weights = weights.to(self.device)
            dist.broadcast(weights, 0)
        self.sampler.set_weights(weights.cpu().numpy())

    def train_one_iter(self, epoch: int, i: int, images: torch.Tensor, targets: torch.Tensor, examples: list):
        """Forward, loss, backward and (when due) an optimizer step; returns the loss items and the batch size."""
        step = i + self.nb * epoch
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last).float() / 255
        if step <= self.warmup_steps:
            self.accumulate = warmup_accumulation(step, self.warmup_steps, NOMINAL_BATCH,
                                                  self.s.batch_size * self.world)
            warmup(self.optimizer, step, self.warmup_steps, epoch, self.lf, self.hyp)
        if self.s.multi_scale:
            images = self.rescale(images)
        if epoch == 0 and i < 2 and self.rank == 0:
            examples.append((images[:4].detach().cpu(), targets.clone()))
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            preds = self.net(images)
            loss, items = self.loss_fn(preds, targets.to(self.device))
            loss = loss * self.world
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"the training loss became {loss.item()} at epoch {epoch + 1}, batch {i + 1}")
        self.scaler.scale(loss).backward()
        if step - self.last_step >= self.accumulate:
            self.optimizer_step()
            self.last_step = step
        return items, images.shape[0]

    def rescale(self, images: torch.Tensor) -> torch.Tensor:
        """--multi-scale: a random size from 0.5x to 1.5x img_size, in steps of the largest stride."""
        gs, size = self.model.image_size_step, self.s.img_size
        target = random.randrange(int(size * 0.5), int(size * 1.5) + gs) // gs * gs
        factor = target / max(images.shape[2:])
        if factor == 1:
            return images
        new_shape = [math.ceil(x * factor / gs) * gs for x in images.shape[2:]]
        return nn.functional.interpolate(images, size=new_shape, mode="bilinear", align_corners=False)

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.net.parameters(), max_norm=MAX_GRAD_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.net)

    def time_left(self, epochs_done: int) -> float:
        """Seconds the remaining epochs (training and validation) should take, at the pace of those done."""
        done = epochs_done / self.s.epochs
        return (time.time() - self.run_started) / done * (1 - done)

    def time_left_line(self, epoch: int) -> str:
        if epoch + 1 >= self.s.epochs:
            return f"training done in {duration(time.time() - self.run_started)}"
        return f"elapsed {duration(time.time() - self.run_started)}, ETA {duration(self.time_left(epoch + 1))}"

    # ---- after_epoch --------------------------------------------------------------------------------------------

    def after_epoch(self, epoch: int, losses: torch.Tensor, lrs: List[float], examples: list,
                    started: float) -> bool:
        """Rank 0 validates the EMA model, logs the epoch, hands its report to `on_epoch` (which saves the stages)
        and applies early stopping; rank 0's decision to stop is then broadcast, so that every rank returns the same
        answer: True when training stops here."""
        stop = False
        if self.rank == 0:
            stop = not self.validate_and_report(epoch, losses, lrs, examples, started)
        if self.world > 1:
            flag = torch.tensor([1 if stop else 0], device=self.device)
            dist.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    def validate_and_report(self, epoch: int, losses: torch.Tensor, lrs: List[float], train_examples: list,
                            started: float) -> bool:
        """Rank 0's part of after_epoch; returns False to stop (on_epoch said so, or `patience` epochs passed
        without a better fitness)."""
        s, work = self.s, self.work_per_epoch

        def val_progress(f):
            self.on_progress((epoch * work + self.nb + f * self.val_batches) / (s.epochs * work))

        half = self.device.type == "cuda"
        eval_model = self.ema.ema.half() if half else self.ema.ema
        metrics, confusion, examples = validate(eval_model, self.val_loader, self.device, self.model.nc, half=half,
                                                progress=val_progress, keep_predictions=4 if epoch == 0 or
                                                epoch == s.epochs - 1 else 0)
        self.ema.ema.float()
        if s.image_weights:
            self.per_class_map = np.full(self.model.nc, metrics.map50_95)
            if metrics.per_class is not None:
                self.per_class_map[metrics.per_class.classes.astype(int)] = metrics.per_class.ap.mean(1)
        improved = self.best is None or metrics.fitness > self.best.fitness
        if improved:
            self.best, self.best_epoch = metrics, epoch
        LOG.info("epoch %d/%d  loss box %.4f obj %.4f cls %.4f  %s%s  (%.1fs, %s)", epoch + 1, s.epochs,
                 *losses.tolist(), summary_line(metrics), "  (best)" if improved else "", time.time() - started,
                 self.time_left_line(epoch))
        report = EpochReport(epoch, losses.tolist(), lrs, metrics, improved, time.time() - started,
                             confusion.matrix, examples, train_examples)
        keep_going = self.on_epoch(report, self.best, self.ema.ema)
        if epoch - self.best_epoch >= s.patience:
            LOG.info("early stop: no better mAP for %d epochs (best at epoch %d)", s.patience, self.best_epoch + 1)
            keep_going = False
        return keep_going
