"""The GPU check's speed and memory steps: the data loader beside each model size's training step (which one bounds
an epoch), inference ms/image (ours and the original's), and a training step's peak GPU memory per model size."""
from __future__ import annotations

import copy
import time

import numpy as np
import original_offline
import torch
from gpu_measures import original_step, per_call_seconds, sync, synthetic_batch, training_step
from gpu_scale import CARD_GIB, Scale

from models.yolo import DetectionModel
from utils.data.loader_workers import init_loader_worker
from utils.data.sample import Sample
from utils.data.train_data import TrainImages, collate_train
from utils.hyperparameters import SCRATCH_LOW
from utils.inference import Detector
from utils.nms import non_max_suppression
from ymir.local.demo import draw_image

PUBLISHED_V100_MS = {1: 6.4, 32: 0.9}  # yolov5s, 640 px, fp16, NMS excluded (YOLOv5 v7.0 README)


class SpeedSteps:
    """The steps that time and size the engine alone (no start.py task): each writes its measures into `rec`.
    `original`: the original YOLOv5's modules where importable (bench/original_offline.py), else None."""

    def __init__(self, scale: Scale, device: torch.device, work, original=None):
        self.s, self.device, self.work, self.original = scale, device, work, original

    def training_speed(self, rec):
        """The loader's images/s beside each model size's GPU step: which one bounds an epoch."""
        s = self.s
        images, targets = synthetic_batch(s.train_batch, s.speed_img)
        images = images.pin_memory() if self.device.type == "cuda" else images
        loader_rate = self._loader_images_per_s()
        rec[f"loader alone (mosaic, {s.workers} workers) images/s"] = round(loader_rate, 1)
        step_rates = {}
        for name in s.step_models:
            step_rates[name] = s.train_batch / self._step_seconds(name, images, targets)
            if self.device.type == "cuda":  # the next size starts from an empty cache
                torch.cuda.empty_cache()
            rec[f"step alone ({name}, {s.speed_img} px, batch {s.train_batch}, AMP) images/s"] = \
                round(step_rates[name], 1)
            rec[f"{name}: an epoch is bound by"] = "the data loader" if loader_rate < step_rates[name] \
                else "the GPU step"
        rec["an epoch is bound by"] = rec[f"{s.speed_model}: an epoch is bound by"]
        if self.original is not None:
            torch.manual_seed(0)
            original = original_step(self.original, s.speed_model, self.device)
            ratio_s = per_call_seconds(lambda: original(images, targets), self.device, s.seconds)
            rec["original step alone images/s"] = round(s.train_batch / ratio_s, 1)
            rec["ours / original (step)"] = round(ratio_s * step_rates[s.speed_model] / s.train_batch, 2)

    def _step_seconds(self, name: str, images: torch.Tensor, targets: torch.Tensor) -> float:
        torch.manual_seed(0)
        step = training_step(DetectionModel(name, nc=80), self.device, amp=self.device.type == "cuda")
        return per_call_seconds(lambda: step(images, targets), self.device, self.s.seconds)

    def _loader_images_per_s(self) -> float:
        s, rng = self.s, np.random.default_rng(0)
        folder = self.work / "loader"
        folder.mkdir(parents=True, exist_ok=True)
        samples = []
        for i in range(max(s.train_batch, 16)):
            picture = draw_image(rng, (s.speed_img * 3 // 4, s.speed_img))
            path = folder / f"{i}.jpg"
            path.write_bytes(picture.jpeg)
            boxes = np.array([b[1:] for b in picture.boxes], np.float32).reshape(-1, 4) + [0, 0, 1, 1]
            samples.append(Sample(path, s.speed_img, s.speed_img * 3 // 4, 1, boxes.astype(np.float32),
                                  np.array([b[0] for b in picture.boxes], np.int64)))
        dataset = TrainImages(samples * 8, s.speed_img, dict(SCRATCH_LOW), augment=True, seed=0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=s.train_batch, shuffle=True, num_workers=s.workers,
                                             collate_fn=collate_train, pin_memory=self.device.type == "cuda",
                                             worker_init_fn=init_loader_worker)
        count, started = 0, None
        for i, (images, _) in enumerate(loader):
            if i == 1:  # the first batch pays for the workers' start
                count, started = 0, time.perf_counter()
            count += images.shape[0]
        return count / max(time.perf_counter() - started, 1e-9) if started else float("nan")

    def inference_speed(self, rec):
        s = self.s
        torch.manual_seed(0)
        model = DetectionModel(s.speed_model, nc=80)
        cuda = self.device.type == "cuda"
        for half in ((True, False) if cuda else (False,)):
            detector = Detector(copy.deepcopy(model), self.device, half=half)
            for batch in s.infer_batches:
                images = synthetic_batch(batch, s.speed_img)[0]
                images = images.to(self.device)
                forward_s = per_call_seconds(lambda d=detector, x=images: d(x), self.device, s.seconds)
                label = f"{s.speed_model} {s.speed_img} px {'fp16' if half else 'fp32'} batch {batch}"
                rec[f"{label}: ms/image (forward)"] = round(forward_s / batch * 1000, 3)
                if half and batch in PUBLISHED_V100_MS and s.speed_model == "yolov5s" and s.speed_img == 640:
                    rec[f"{label}: the original's published V100 ms/image"] = PUBLISHED_V100_MS[batch]
            if half or not cuda:
                decoded, _ = detector(synthetic_batch(s.infer_batches[-1], s.speed_img)[0])
                nms_s = per_call_seconds(lambda d=decoded: non_max_suppression(d, 0.25, 0.45), self.device, s.seconds)
                rec["NMS ms/image (conf 0.25, random weights)"] = round(nms_s / decoded.shape[0] * 1000, 3)
        if self.original is not None:
            original = original_offline.build(self.original, s.speed_model, 80)
            original.load_state_dict(model.state_dict())
            original = original.fuse().eval().to(self.device)
            original = original.half() if cuda else original
            for batch in s.infer_batches:
                x = synthetic_batch(batch, s.speed_img)[0].to(self.device)
                x = (x.half() if cuda else x.float()) / 255
                with torch.inference_mode():
                    seconds = per_call_seconds(lambda x=x: original(x), self.device, s.seconds)
                rec[f"original {'fp16' if cuda else 'fp32'} batch {batch}: ms/image (forward)"] = \
                    round(seconds / batch * 1000, 3)

    def memory(self, rec):
        s = self.s
        for name in s.memory_models:
            peaks = []
            for batch in s.memory_batches:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
                torch.manual_seed(0)
                step = training_step(DetectionModel(name, nc=80), self.device, amp=True)
                images, targets = synthetic_batch(batch, 640)
                for _ in range(2):
                    step(images, targets)
                sync(self.device)
                peaks.append(torch.cuda.max_memory_allocated(self.device) / 2 ** 30)
                del step
            per_image = (peaks[-1] - peaks[0]) / (s.memory_batches[-1] - s.memory_batches[0])
            fixed = peaks[0] - per_image * s.memory_batches[0]
            advice = {f"{gib} GiB": max(0, int((gib * 0.9 - fixed) / max(per_image, 1e-6))) for gib in CARD_GIB}
            rec[name] = (f"peak {', '.join(f'{p:.2f}' for p in peaks)} GiB at batch "
                         f"{', '.join(map(str, s.memory_batches))}; largest batch_size_per_gpu at 640 px: {advice}")
