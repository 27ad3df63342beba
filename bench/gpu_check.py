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
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import original_offline
import torch
import yaml
from gpu_check_report import CheckFailed, Report
from gpu_measures import matched_share, synthetic_batch, training_step
from gpu_scale import DRY_RUN, GPU, Scale
from gpu_speed import SpeedSteps

from models.yolo import DetectionModel
from utils.checkpoint import build_model, read_checkpoint
from utils.data.letterboxed import LetterboxedImages, collate
from utils.inference import Detector
from ymir.local.demo import make_workdir

REPO = Path(__file__).resolve().parent.parent

START = REPO / "start.py"


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

    def speed_steps(self) -> SpeedSteps:
        """The engine-alone speed and memory steps, with the original YOLOv5 as the environment step found it."""
        return SpeedSteps(self.s, self.device, self.work, self.original)


def step_runner(check: GpuCheck, path: str):
    """The step named by `path`: a GpuCheck method ("training_task"), or after "speed." a SpeedSteps method
    ("speed.memory"). It is looked up when it runs, inside the report's record of that step, so that a failure
    there is the step's."""
    def run(rec):
        owner, _, name = path.rpartition(".")
        target = check.speed_steps() if owner == "speed" else check
        return getattr(target, name)(rec)
    return run


# (name, what it measures, the step: a GpuCheck method, or "speed." and a SpeedSteps method, whether it needs CUDA)
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
     "speed.training_speed", False),
    ("inference speed", "ms/image at batch 1 and 32, fp16 and fp32, ours and the original's, NMS apart",
     "speed.inference_speed", False),
    ("mining cost", "each mining algorithm's images/s through start.py, relative to plain inference",
     "mining_cost", False),
    ("GPU memory", "peak memory of a training step per model size at batch 8 and 16 (640 px, AMP)",
     "speed.memory", True),
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
            report.run(name, measures, step_runner(check, method), needs_cuda=needs_cuda)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.header["finished"] = time.strftime("%F %T")
    report.write()
    print(f"report: {args.out / 'gpu-check.md'}; failed: {report.failed or 'none'}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
