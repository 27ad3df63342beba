"""The GPU check's measuring tools: timing a call on a device, a synthetic training batch, the product's and the
original's training steps as they run in training, and how many detections two outputs share."""
from __future__ import annotations

import time
from typing import Callable, Tuple

import numpy as np
import original_offline
import torch

from models.yolo import DetectionModel
from utils.hyperparameters import SCRATCH_LOW
from utils.loss import YoloLoss
from utils.nms import non_max_suppression
from utils.optim import build_optimizer
from utils.trainer import grad_scaler


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call_seconds(fn: Callable[[], object], device: torch.device, seconds: float, warmup: int = 2) -> float:
    """Median time of one call, calls repeated for about `seconds` (at least 3)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(times) < 3:
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def synthetic_batch(batch: int, size: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (B, 3, size, size) and YOLO targets (image, class, cx, cy, w, h) for them."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    n = 6 * batch
    targets = torch.cat([torch.arange(batch).repeat_interleave(6)[:, None].float(),
                         torch.randint(0, 80, (n, 1), generator=g).float(),
                         torch.rand(n, 2, generator=g) * 0.6 + 0.2, torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1)
    return images, targets


def scaled_step(loss: torch.Tensor, model: torch.nn.Module, optimizer, scaler) -> None:
    """Backward through AMP's scaler, gradients clipped at norm 10, one optimizer step (both trainers do this)."""
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()


def training_step(model: DetectionModel, device: torch.device, amp: bool):
    """The product's training step (utils/trainer.py): channels-last, autocast, scaled loss, clipped step."""
    model.train().to(device).to(memory_format=torch.channels_last)
    loss_fn = YoloLoss(model.detect, dict(SCRATCH_LOW))
    optimizer = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    scaler = grad_scaler(amp)

    def step(images_uint8: torch.Tensor, targets: torch.Tensor) -> float:
        images = images_uint8.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, enabled=amp):
            loss, _ = loss_fn(model(images.float() / 255), targets.to(device))
        scaled_step(loss, model, optimizer, scaler)
        return float(loss.detach())
    return step


def matched_share(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Share of the reference's detections (conf 0.25, NMS 0.45) found in `other` with IoU >= 0.9, same class."""
    from utils.boxes import box_iou

    found = total = 0
    for ref, got in zip(non_max_suppression(reference, 0.25, 0.45), non_max_suppression(other, 0.25, 0.45)):
        total += len(ref)
        if len(ref) and len(got):
            iou = box_iou(ref[:, :4], got[:, :4])
            iou[ref[:, 5:6] != got[:, 5].unsqueeze(0)] = 0
            found += int((iou.max(1).values >= 0.9).sum())
    return found / total if total else 1.0


def original_step(yolov5, name: str, device: torch.device):
    """The original's training step (its train.py): autocast, ComputeLoss, GradScaler, clipped SGD step."""
    model = original_offline.build(yolov5, name, 80).to(device).train()
    model.hyp = dict(SCRATCH_LOW)
    loss_fn = yolov5.utils.loss.ComputeLoss(model)
    optimizer = yolov5.utils.torch_utils.smart_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    amp = device.type == "cuda"
    scaler = grad_scaler(amp)

    def step(images_uint8, targets):
        with torch.autocast(device_type=device.type, enabled=amp):
            loss, _ = loss_fn(model(images_uint8.to(device, non_blocking=True).float() / 255), targets.to(device))
        scaled_step(loss, model, optimizer, scaler)
    return step
