"""Training task: YMIR dataset in, model stages out (`best` always, `epoch_N` on request)."""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from models.architecture import MODEL_NAMES, ArchitectureError, architecture
from models.yolo import DetectionModel
from utils.checkpoint import (
    Checkpoint,
    CheckpointError,
    build_model,
    read_checkpoint,
    save_checkpoint,
    transfer_weights,
)
from utils.data.train_data import class_histogram
from utils.export import ExportError, export_onnx, max_onnx_opset
from utils.inference import make_detector
from utils.metrics import DetectionMetrics
from utils.ranks import rank_and_world
from utils.train_settings import TrainSettings
from utils.trainer import EpochReport, NonFiniteLossError, seed_everything, train
from utils.validate import VAL_CONF, summary_line
from ymir.config import TrainingConfig
from ymir.context import TaskContext
from ymir.dataset import read_split
from ymir.errors import ConfigError, DatasetError, ModelError, NanLossError
from ymir.mining.labelled_looks import LOOKS_IOU, LOOKS_MAX, LOOKS_MAX_DET, describe_images, pack, sample_paths
from ymir.results import ModelStageWriter
from ymir.task_processes import run_in_processes
from ymir.tasks import fitted_image_size
from ymir.training_report import TrainingReport
from ymir.weights import load_checkpoint

LOG = logging.getLogger(__name__)
WEIGHTS_DIR_ENV = "YOLOV5_WEIGHTS_DIR"  # where the image keeps the official weights, <model>.pt
DEFAULT_WEIGHTS_DIR = "/app/weights"
EVALUATE_CONFIG = {"iou_thr": 0.5, "conf_thr": VAL_CONF}
ONNX_REFRESH_S = 600  # during training, the best stage's ONNX is refreshed at most this often (and at the end)


def run_training(ctx: TaskContext) -> None:
    cfg, env = ctx.config.training, ctx.env
    if cfg.opset > max_onnx_opset():  # found now, not after the first epoch
        raise ConfigError(f"config 'opset' = {cfg.opset}: this image's torch {torch.__version__} exports ONNX "
                          f"opsets up to {max_onnx_opset()}")
    if env.training_index_file is None or env.val_index_file is None:
        raise ConfigError("env.yaml names no training_index_file / val_index_file for a training task")
    run_in_processes(ctx, datetime.timedelta(hours=3), lambda device: _train(ctx, device))


def _train(ctx: TaskContext, device: torch.device) -> None:
    cfg, platform, env = ctx.config.training, ctx.config.platform, ctx.env
    rank, world = rank_and_world()
    names = list(platform.class_names)
    fmt = platform.annotation_format
    train_samples, _ = read_split(env.training_index_file, names, fmt, ctx.mapper, "train")
    val_samples, _ = read_split(env.val_index_file, names, fmt, ctx.mapper, "val")
    require_boxes(train_samples, val_samples, names)
    seed_everything(cfg.settings.seed)  # the random initialisation too: a run is reproducible from its seed
    model, origin = build_training_model(cfg, env.models_dir, platform.pretrained_model_params, len(names))
    img_size = fitted_image_size(model, cfg.img_size)
    LOG.info("training %s (%s) on %d images, validating on %d, %d classes, %d epochs at %d px, batch %d x %d, %s",
             cfg.model, origin, len(train_samples), len(val_samples), len(names), cfg.epochs, img_size,
             cfg.batch_size_per_gpu, world, device)
    settings = dataclasses.replace(cfg.settings, img_size=img_size, device=device,
                                   workers=min(cfg.num_workers_per_gpu, os.cpu_count() or 1))
    saver = StageSaver(env.output.models_dir, cfg, names, settings, class_histogram(train_samples, len(names)))
    report = TrainingReport(env.output.tensorboard_dir, names) if rank == 0 else None

    def on_epoch(epoch: EpochReport, best: DetectionMetrics, ema_model) -> bool:
        report.epoch(epoch)
        saver.epoch_end(epoch, ema_model)
        return True

    progress = ctx.monitor.span(0.01, 0.99)
    try:
        train(model, train_samples, val_samples, settings, on_epoch, progress)
        if world > 1:
            LOG.info("rank %d final weights checksum %s", rank, weights_checksum(model))
    except NonFiniteLossError as exc:
        raise NanLossError(str(exc)) from None
    finally:
        if report:
            report.close()
    if rank == 0:
        saver.finish()
        saver.add_labelled_looks([s.image for s in train_samples + val_samples], device, cfg.batch_size_per_gpu,
                                 settings.workers)


def weights_checksum(model) -> str:
    """A short digest of the trainable weights, to compare processes (batch-norm statistics are per process)."""
    digest = hashlib.sha1()
    for key, value in sorted(model.named_parameters()):
        digest.update(key.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def bundled_weights(model_name: str) -> Optional[Path]:
    path = Path(os.environ.get(WEIGHTS_DIR_ENV, DEFAULT_WEIGHTS_DIR)) / f"{model_name}.pt"
    return path if path.is_file() else None


def build_training_model(cfg: TrainingConfig, models_dir: Path, pretrained: Tuple[Path, ...],
                         nc: int) -> Tuple[DetectionModel, str]:
    """The model to train and where its weights came from: the user's model, the bundled official weights for
    `model`, or random initialisation (with a warning)."""
    ckpt: Optional[Checkpoint] = None
    origin = "random initialisation"
    if pretrained:
        ckpt = load_checkpoint(pretrained, models_dir)
        origin = f"pretrained model {ckpt.meta.get('path', '')}".strip()
        arch = ckpt.yaml
        if _architecture_name(arch) != cfg.model:
            LOG.warning("the pretrained model's architecture (%s) is used; config model %s is ignored",
                        _architecture_name(arch) or "custom", cfg.model)
    else:
        arch = architecture(cfg.model)
        path = bundled_weights(cfg.model)
        if path is not None:
            try:
                ckpt = read_checkpoint(path)
            except CheckpointError as exc:
                raise ModelError(f"bundled weights for {cfg.model} are unusable: {exc}") from None
            origin = f"official {cfg.model} weights"
        else:
            LOG.warning("no pretrained model and no bundled %s weights (%s/%s.pt): training from random "
                        "initialisation (from scratch), which needs more data and epochs than fine-tuning",
                        cfg.model, os.environ.get(WEIGHTS_DIR_ENV, DEFAULT_WEIGHTS_DIR), cfg.model)
    arch = {k: v for k, v in arch.items() if k in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone",
                                                    "head")}
    try:
        model = DetectionModel(arch, nc=nc, activation=cfg.activation)
    except ArchitectureError as exc:
        raise ModelError(f"the pretrained model's architecture cannot be built: {exc}") from None
    if ckpt is not None:
        if ckpt.activation.lower() != cfg.activation.lower():
            LOG.warning("weights were trained with %s; the model is built with %s as configured", ckpt.activation,
                        cfg.activation)
        copied, total = transfer_weights(model, ckpt.state_dict)
        origin += f", {copied}/{total} tensors transferred"
    return model, origin


def require_boxes(train_samples: List, val_samples: List, names: List[str]) -> None:
    """A training split without a single box teaches nothing (every label dropped, e.g. class names that do not
    match the annotations'); a validation split without one measures nothing."""
    if not any(len(s.boxes) for s in train_samples):
        raise DatasetError(f"none of the {len(train_samples)} training images holds a box of the classes {names}: "
                           "check class_names and export_format against the annotations")
    if not any(len(s.boxes) for s in val_samples):
        LOG.warning("none of the %d validation images holds a box: mAP will be 0 and the best stage is the first "
                    "epoch's", len(val_samples))


def _architecture_name(arch: dict) -> Optional[str]:
    for name in MODEL_NAMES:
        ref = architecture(name)
        if all(ref[k] == arch.get(k) for k in ("depth_multiple", "width_multiple", "backbone", "head")):
            return name
    return None


class StageSaver:
    """Writes the `best` stage as soon as a new best appears, and `epoch_N` stages every save_period epochs.

    A new best's weights are saved at once; its ONNX export (and onnxruntime check) follows at most every
    ONNX_REFRESH_S seconds and always at the end, from the saved weights. Until then the stage lists the
    weights alone, never an ONNX file of an older best.
    """

    def __init__(self, models_dir: Path, cfg: TrainingConfig, names: List[str], settings: TrainSettings,
                 histogram: List[int]):
        self.writer = ModelStageWriter(models_dir, EVALUATE_CONFIG)
        self.cfg, self.names, self.img_size = cfg, names, settings.img_size
        self.meta = {"img_size": settings.img_size, "class_histogram": histogram, "hyp": settings.training_hyp,
                     "model": settings.model}
        self.opt = settings.yolov5_opt()
        self.patterns = [re.compile(p) for p in cfg.saved_file_patterns]
        self.best: Optional[Tuple[int, DetectionMetrics]] = None
        self.best_has_onnx = False
        self.last_onnx = time.monotonic()

    def _keep(self, files: List[str]) -> List[str]:
        """The files a stage lists: the weights always (YMIR deletes /out after packing: an unlisted model is
        lost), the others where ymir_saved_file_patterns is empty or one of its patterns matches."""
        return [f for f in files if f.endswith(".pt") or not self.patterns or any(p.search(f) for p in self.patterns)]

    @staticmethod
    def metrics(m: DetectionMetrics) -> dict:
        return {"mAP": m.map50, "mAR": m.recall, "mAP50_95": m.map50_95, "precision": m.precision,
                "tp": m.tp, "fp": m.fp, "fn": m.fn}

    def class_ap50(self, m: DetectionMetrics) -> List[Optional[float]]:
        """AP@0.5 per class on the validation set, None for a class it does not hold (mining's difficulty)."""
        ap: List[Optional[float]] = [None] * len(self.names)
        if m.per_class is not None:
            for c, value in zip(m.per_class.classes.astype(int), m.per_class.ap[:, 0]):
                if 0 <= c < len(ap):
                    ap[c] = float(value)
        return ap

    def _save(self, stage: str, stem: str, model, epoch: int, m: DetectionMetrics, onnx: bool, best: bool) -> bool:
        """Save and list the weights, then (with `onnx`) the export; returns whether the stage lists an ONNX."""
        folder = self.writer.stage_dir(stage)
        folder.mkdir(parents=True, exist_ok=True)
        listed = self.writer.stages.get(stage)
        if listed is not None and f"{stem}.onnx" in listed.files:  # never list an older model's export beside it
            self.writer.add(stage, [f for f in listed.files if f != f"{stem}.onnx"], listed.metrics, best=best,
                            timestamp=listed.timestamp)
        (folder / f"{stem}.onnx").unlink(missing_ok=True)
        meta = dict(self.meta, epoch=epoch + 1, metrics=self.metrics(m), class_ap50=self.class_ap50(m))
        save_checkpoint(folder / f"{stem}.pt", model, self.names, epoch=epoch + 1, meta=meta, opt=self.opt,
                        best_fitness=float(m.map50))  # what "best" means here (a float, as YOLOv5 keeps it)
        self.writer.add(stage, self._keep([f"{stem}.pt"]), self.metrics(m), best=best, timestamp=int(time.time()))
        return onnx and self._add_onnx(stage, stem, model, m, best)

    def _add_onnx(self, stage: str, stem: str, model, m: DetectionMetrics, best: bool) -> bool:
        folder = self.writer.stage_dir(stage)
        tmp = folder / f".{stem}.onnx.tmp"
        try:
            export_onnx(model, tmp, self.img_size, self.cfg.opset)
        except ExportError as exc:
            LOG.error("stage %s is saved without ONNX: %s", stage, exc)
            tmp.unlink(missing_ok=True)
            return False
        tmp.replace(folder / f"{stem}.onnx")
        LOG.info("stage %s: %s written", stage, folder / f"{stem}.onnx")
        self.writer.add(stage, self._keep([f"{stem}.pt", f"{stem}.onnx"]), self.metrics(m), best=best,
                        timestamp=int(time.time()))
        return True

    def epoch_end(self, report: EpochReport, ema_model) -> None:
        if report.best:
            self.best = (report.epoch, report.metrics)
            onnx = time.monotonic() - self.last_onnx >= ONNX_REFRESH_S
            self.best_has_onnx = self._save("best", "best", ema_model, report.epoch, report.metrics, onnx=onnx,
                                            best=True)
            if onnx:
                self.last_onnx = time.monotonic()
        number = report.epoch + 1
        if not self.cfg.save_best_only and number % self.cfg.save_period == 0:
            self._save(f"epoch_{number}", f"epoch_{number}", ema_model, report.epoch, report.metrics, onnx=False,
                       best=False)

    def finish(self) -> None:
        if self.best is None:
            raise ModelError("training ended before any epoch was validated: no model was saved")
        epoch, m = self.best
        if not self.best_has_onnx:  # export what the stage holds: the saved (fp16) best weights
            saved = build_model(read_checkpoint(self.writer.stage_dir("best") / "best.pt"))
            self.best_has_onnx = self._add_onnx("best", "best", saved, m, best=True)
        LOG.info("best model: epoch %d, %s", epoch + 1, summary_line(m))
        LOG.info("model stages: %s (best stage %s in %s)", sorted(self.writer.stages), self.writer.best_stage_name,
                 self.writer.models_dir / "result.yaml")

    def add_labelled_looks(self, paths: List[Path], device: torch.device, batch_size: int, workers: int) -> None:
        """The best stage's model describes (a sample of) the labelled images for `diverse` mining, into its own
        checkpoint (ymir.mining.labelled_looks). The weights, and so the stage's ONNX, stay as they are; should
        this fail, the stage stays as it was and mining walks without them."""
        path = self.writer.stage_dir("best") / "best.pt"
        started = time.perf_counter()
        LOG.info("best model: describing up to %d labelled images for diverse mining", min(len(paths), LOOKS_MAX))
        try:
            ckpt = read_checkpoint(path)
            model = build_model(ckpt)
            anchors = model.detect.na
            detector = make_detector(model, device, self.img_size, features=True)
            looks = describe_images(detector, sample_paths(paths), self.img_size, ckpt.nc, anchors, LOOKS_IOU,
                                    LOOKS_MAX_DET, batch_size, workers)
            meta = dict(ckpt.meta, labelled_looks=pack(looks, ckpt.nc, self.img_size))
            save_checkpoint(path, build_model(ckpt), self.names, epoch=ckpt.epoch, meta=meta, opt=self.opt,
                            best_fitness=float(self.best[1].map50))
        except Exception as exc:  # an aid to mining, never a reason to lose the training
            LOG.warning("the best model keeps no labelled looks (diverse mining walks without them): %s: %s",
                        type(exc).__name__, exc)
            return
        LOG.info("best model: %d labelled images described for diverse mining in %.1f s (of %d sampled)",
                 len(looks), time.perf_counter() - started, min(len(paths), LOOKS_MAX))

