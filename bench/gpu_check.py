"""The GPU check: one run that proves the product's CUDA paths and measures them, written to one report.

    bash tools/gpu_check.sh [--out DIR]      on a machine with an NVIDIA GPU (sized for at most 8 minutes on
                                             one H200; not yet timed there)
    bash tools/gpu_check.sh --dry-run        anywhere: every step at toy sizes on the CPU; CUDA-only steps are
                                             skipped, saying what they would measure
    bash tools/gpu_check.sh --image IMAGE    either of the above inside a built image (its Python and packages):
                                             proves the stack users pull, not only a development venv's

Correctness: a training task and a mining + inference task through start.py on the GPU (gpu_id '0', loader
workers, pinned memory); CUDA inference against CPU inference on the trained weights (fp32 with TF32 off, the
default with TF32 convolutions, and fp16), each within a stated tolerance; an AMP training run against fp32 on the
same batches. Speed: the training step alone and the data loader alone (which bounds an epoch), inference
ms/image at batch 1 and 32 (fp16 and fp32), the same for the original YOLOv5 v7.0 where it is importable (see
bench/original_offline.py), and each mining algorithm's cost over plain inference. Memory: peak GPU memory of a
training step per model size at batch 8 and 16, and the largest batch per card size it implies.

Every step is timed and recorded in DIR/gpu-check.md and DIR/gpu-check.json as soon as it ends, failed or not.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import original_offline
import torch
import yaml
from gpu_check_report import CheckFailed, Report
from gpu_measures import matched_share, original_step, per_call_seconds, sync, synthetic_batch, training_step

from models.architecture import MODEL_NAMES
from models.yolo import DetectionModel
from utils.checkpoint import build_model, read_checkpoint
from utils.data.letterboxed import LetterboxedImages, collate
from utils.data.sample import Sample
from utils.data.train_data import TrainImages, collate_train
from utils.hyperparameters import SCRATCH_LOW
from utils.inference import Detector
from utils.nms import non_max_suppression
from ymir.local.demo import draw_image, make_workdir

REPO = Path(__file__).resolve().parent.parent

START = REPO / "start.py"
PUBLISHED_V100_MS = {1: 6.4, 32: 0.9}  # yolov5s, 640 px, fp16, NMS excluded (YOLOv5 v7.0 README)
CARD_GIB = (16, 24, 40, 80)


@dataclass(frozen=True)
class Scale:
    """How big each step runs: the real sizes on a GPU, toy sizes in the dry run."""

    device: str
    train_images: int = 256
    epochs: int = 10
    task_img: int = 256
    candidates: int = 256
    speed_model: str = "yolov5s"
    speed_img: int = 640
    train_batch: int = 64
    infer_batches: Tuple[int, ...] = (1, 32)
    amp_steps: int = 30
    seconds: float = 3.0
    memory_models: Tuple[str, ...] = MODEL_NAMES
    step_models: Tuple[str, ...] = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")  # step beside loader
    memory_batches: Tuple[int, ...] = (8, 16)
    workers: int = 8
    task_timeout: int = 300
    cost_algorithms: Tuple[str, ...] = ("random", "entropy", "aldd", "cald", "diverse")


GPU = Scale("cuda")
DRY_RUN = Scale("cpu", train_images=16, epochs=1, task_img=64, candidates=8, speed_model="yolov5n", speed_img=64,
                train_batch=2, infer_batches=(1, 2), amp_steps=3, seconds=0.2, memory_models=("yolov5n",),
                step_models=("yolov5n",),
                memory_batches=(1, 2), workers=1, task_timeout=300, cost_algorithms=("cald",))


def run_task(work: Path, timeout: int) -> Tuple[int, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(START), "--in", str(work / "in"), "--out", str(work / "out")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, time.perf_counter() - started


def loop_images_per_s(log: str) -> float:
    found = re.findall(r"rank 0: (\d+) images in ([\d.]+) s", log)
    if not found:
        raise CheckFailed("the task's log has no 'rank 0: N images in S s' line")
    images, seconds = found[-1]
    return int(images) / max(float(seconds), 1e-9)


# ---- the steps ----------------------------------------------------------------------------------------------------

class GpuCheck:
    def __init__(self, scale: Scale, work: Path):
        self.s, self.work = scale, work
        self.device = torch.device("cuda:0" if scale.device == "cuda" else "cpu")
        self.gpu_id = "0" if scale.device == "cuda" else ""
        self.best_stage: Optional[Path] = None
        self.original = None

    def environment(self, rec):
        rec.update(python=platform.python_version(), python_executable=sys.executable,
                   image=os.environ.get("GPU_CHECK_IMAGE", "none: this machine's own Python"),
                   torch=torch.__version__, torch_cuda=torch.version.cuda, cpus=os.cpu_count(),
                   cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            rec.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                       capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                       cudnn=torch.backends.cudnn.version())
        for package in ("torchvision", "onnx", "onnxruntime", "cv2"):
            try:
                rec[package] = __import__(package).__version__
            except ImportError:
                rec[package] = "not installed"
        self.original = original_offline.load()
        rec["original_yolov5"] = (f"importable (stand-ins for {original_offline.stand_ins() or 'nothing'})"
                                  if self.original else f"not importable: {original_offline.why_not}")

    def training_task(self, rec):
        work = make_workdir(self.work / "train", "training", num_train=self.s.train_images,
                            num_val=max(4, self.s.train_images // 4), image_size=(self.s.task_img, self.s.task_img),
                            seed=3, config={"epochs": self.s.epochs, "img_size": self.s.task_img, "model": "yolov5n",
                                            "batch_size_per_gpu": 32 if self.s.device == "cuda" else 4,
                                            "num_workers_per_gpu": min(4, self.s.workers), "gpu_id": self.gpu_id,
                                            "args_options": "--hyp warmup_epochs=0 mosaic=0 lr0=0.02"})
        code, log, seconds = run_task(work, self.s.task_timeout)
        rec.update(exit_code=code, seconds=round(seconds, 1))
        if code != 0:
            raise CheckFailed(f"start.py exited {code}: {log.strip().splitlines()[-1] if log.strip() else ''}")
        result = yaml.safe_load((work / "out/models/result.yaml").read_text())
        best = result["model_stages"][result["best_stage_name"]]
        rec.update(files=best["files"], map50=round(best["mAP"], 3))
        self.best_stage = work / "out/models" / result["best_stage_name"]
        used = re.findall(r"batch \d+ x \d+, (\S+)", log)
        rec["device_in_log"] = used[-1] if used else "?"
        if self.s.device == "cuda" and not (used and used[-1].startswith("cuda")):
            raise CheckFailed(f"training did not run on the GPU (log says {used})")
        if not {"best.pt", "best.onnx"} <= set(best["files"]) or not math.isfinite(best["mAP"]):
            raise CheckFailed(f"best stage incomplete: {best}")

    def _mining_workdir(self, name: str, algorithm: Optional[str], infer: bool) -> Path:
        task = "mining+infer" if algorithm and infer else ("mining" if algorithm else "infer")
        config = {"img_size": self.s.speed_img, "gpu_id": self.gpu_id, "pin_memory": True,
                  "num_workers_per_gpu": min(2, self.s.workers), "batch_size_per_gpu": 32 if self.gpu_id else 2}
        if algorithm:
            config["mining_algorithm"] = algorithm
        return make_workdir(self.work / name, task, num_candidates=self.s.candidates, seed=4,
                            image_size=(self.s.speed_img * 3 // 4, self.s.speed_img), config=config,
                            model_stage=self._stage())

    def _stage(self) -> Path:
        if self.best_stage is None:
            raise CheckFailed("no trained model (the training task failed)")
        return self.best_stage

    def mine_and_infer_task(self, rec):
        work = self._mining_workdir("mine", "aldd", infer=True)
        code, log, seconds = run_task(work, self.s.task_timeout)
        rec.update(exit_code=code, seconds=round(seconds, 1))
        if code != 0:
            raise CheckFailed(f"start.py exited {code}: {log.strip().splitlines()[-1] if log.strip() else ''}")
        ranked = (work / "out/result.tsv").read_text().splitlines()
        detection = json.loads((work / "out/infer-result.json").read_text())["detection"]
        rec.update(ranked=len(ranked), predicted=len(detection), images_per_s=round(loop_images_per_s(log), 1))
        if len(ranked) != self.s.candidates or len(detection) != self.s.candidates:
            raise CheckFailed(f"{len(ranked)} ranked and {len(detection)} predicted of {self.s.candidates}")

    def mining_cost(self, rec):
        base = None
        for algorithm in (None, *self.s.cost_algorithms):
            work = self._mining_workdir(f"cost-{algorithm or 'infer'}", algorithm, infer=algorithm is None)
            code, log, seconds = run_task(work, self.s.task_timeout)
            if code != 0:
                raise CheckFailed(f"{algorithm or 'inference'} exited {code}")
            if algorithm == "random":  # no model, no forward pass: the whole task's time says it
                rec["random: whole task seconds (no forward pass)"] = round(seconds, 1)
                continue
            rate = loop_images_per_s(log)
            base = base or rate
            rec[f"{algorithm or 'inference'} images/s"] = round(rate, 1)
            if algorithm:
                rec[f"{algorithm} cost (x inference)"] = round(base / rate, 2)

    def _detectors(self) -> Tuple[torch.Tensor, List]:
        ckpt = read_checkpoint(self._stage() / "best.pt")
        images, metas = collate([LetterboxedImages(sorted((self.work / "mine/in/assets").rglob("*.jpg")),
                                                   self.s.speed_img)[i] for i in range(min(16, self.s.candidates))])
        return images, [build_model(ckpt) for _ in range(4)]

    def cuda_against_cpu(self, rec):
        images, models = self._detectors()
        reference, _ = Detector(models[0], torch.device("cpu"))(images)
        variants = {"fp32, TF32 off": (models[1], False, False, 0.05, 1e-3),
                    "default (TF32 convolutions)": (models[2], False, True, 1.0, 1e-2),
                    "fp16": (models[3], True, True, 1.0, 1e-2)}
        failures = []
        for name, (model, half, tf32, box_tol, score_tol) in variants.items():
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            decoded, _ = Detector(model, self.device, half=half and self.device.type == "cuda")(images)
            decoded = decoded.cpu()
            box = float((decoded[..., :4] - reference[..., :4]).abs().max())
            score = float((decoded[..., 4:] - reference[..., 4:]).abs().max())
            matched = matched_share(reference, decoded)
            rec[name] = f"max |box| {box:.2e} px (bound {box_tol}), max |score| {score:.2e} (bound {score_tol}), " \
                        f"{matched:.1%} of CPU detections matched"
            if box > box_tol or score > score_tol or matched < 0.95:
                failures.append(name)
        torch.backends.cudnn.allow_tf32 = True
        if failures:
            raise CheckFailed(f"outside the bounds: {failures}")

    def amp_against_fp32(self, rec):
        batches = [synthetic_batch(16 if self.gpu_id else 2, 320 if self.gpu_id else 64, seed=i)
                   for i in range(self.s.amp_steps)]
        torch.manual_seed(0)
        start = DetectionModel("yolov5n", nc=80)
        curves = {}
        for amp in (False, True):
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            model = copy.deepcopy(start)
            step = training_step(model, self.device, amp=amp and self.device.type == "cuda")
            curves[amp] = [step(images, targets) for images, targets in batches]
            finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            rec[f"{'AMP' if amp else 'fp32'} weights finite"] = finite
            if not finite or not all(math.isfinite(v) for v in curves[amp]):
                raise CheckFailed(f"non-finite loss or weights with amp={amp}")
        torch.backends.cudnn.allow_tf32 = True
        relative = [abs(a - b) / max(abs(b), 1e-9) for a, b in zip(curves[True], curves[False])]
        rec.update(fp32_first_last=[round(curves[False][0], 4), round(curves[False][-1], 4)],
                   amp_first_last=[round(curves[True][0], 4), round(curves[True][-1], 4)],
                   median_relative_difference=round(float(np.median(relative)), 4), bound=0.05)
        if float(np.median(relative)) > 0.05:
            raise CheckFailed("AMP's loss curve departs from fp32's by more than 5 % (median over steps)")

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
                                             collate_fn=collate_train, pin_memory=self.device.type == "cuda")
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


STEPS = [
    ("environment", "versions, the GPU, whether the original YOLOv5 is importable", "environment", False),
    ("training task", "start.py training on the GPU (yolov5n, demo data, loader workers): stages valid",
     "training_task", False),
    ("mining + inference task", "start.py aldd mining + inference on the GPU with pinned memory and workers",
     "mine_and_infer_task", False),
    ("CUDA against CPU", "inference on CUDA (fp32 TF32 off / default / fp16) against CPU fp32, trained weights",
     "cuda_against_cpu", False),
    ("AMP against fp32", "loss curves of AMP and fp32 training on the same batches; finite weights",
     "amp_against_fp32", False),
    ("training speed", "the data loader alone (images/s) beside each model size's training step, and the original's",
     "training_speed", False),
    ("inference speed", "ms/image at batch 1 and 32, fp16 and fp32, ours and the original's, NMS apart",
     "inference_speed", False),
    ("mining cost", "each mining algorithm's images/s through start.py, relative to plain inference",
     "mining_cost", False),
    ("GPU memory", "peak memory of a training step per model size at batch 8 and 16 (640 px, AMP)",
     "memory", True),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU; CUDA-only steps skipped")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="where the report goes")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device here: run with --dry-run, or on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    scale = DRY_RUN if args.dry_run else GPU
    report = Report(args.out, cuda=scale.device == "cuda")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        check = GpuCheck(scale, work)
        for name, measures, method, needs_cuda in STEPS:
            report.run(name, measures, getattr(check, method), needs_cuda=needs_cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.header["finished"] = time.strftime("%F %T")
    report.write()
    print(f"report: {args.out / 'gpu-check.md'}; failed: {report.failed or 'none'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
