"""A stage trained here is a YOLOv5 v7.0 checkpoint: the original opens it with its own functions (detect.py's
loading, torch.hub's, val.py, export.py) in a process that cannot import our code, and predicts what we predict."""
import json
import os
import subprocess

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from tests.helpers import HANG_LIMIT, REPO, load_plain, run_start
from utils.checkpoint import build_model, read_checkpoint
from utils.data.letterboxed import LetterboxedImages, collate
from utils.inference import Detector
from utils.nms import non_max_suppression
from ymir.local.demo import CLASS_NAMES, make_workdir

ORACLE_PYTHON = REPO / ".venvs" / "oracle" / "bin" / "python"
ORACLE_TOOL = REPO / "tests" / "oracle" / "oracle_tool.py"
IMG_SIZE = 64
SIDE = 96  # the generated images' width and height


def yolo_dataset(work, root):
    """The task's validation split in YOLO's layout (images/, labels/ with cx cy w h fractions) and its yaml."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for line in (work / "in" / "val-index.tsv").read_text().splitlines():
        image, annotation = (work / "in" / p[len("/in/"):] for p in line.split("\t"))
        (root / "images" / image.name).write_bytes(image.read_bytes())
        rows = []
        for c, x1, y1, x2, y2 in (map(int, row.split(",")[:5]) for row in annotation.read_text().splitlines()):
            rows.append(f"{c} {(x1 + x2 + 1) / 2 / SIDE:.6f} {(y1 + y2 + 1) / 2 / SIDE:.6f} "
                        f"{(x2 - x1 + 1) / SIDE:.6f} {(y2 - y1 + 1) / SIDE:.6f}\n")
        (root / "labels" / f"{image.stem}.txt").write_text("".join(rows))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images", "val": "images",
                                    "names": dict(enumerate(CLASS_NAMES))}))
    return data, sorted((root / "images").iterdir())


def train_stage(tmp_path, model="yolov5n", epochs=3, processes="1"):
    """A stage trained by start.py, the production path (channels-last training, the EMA, DDP when processes
    is 2): the best stage's weights file and the task folder."""
    work = make_workdir(tmp_path / "task", "training", num_train=32, num_val=8, image_size=(SIDE, SIDE), seed=3,
                        config={"epochs": epochs, "img_size": IMG_SIZE, "batch_size_per_gpu": 8, "model": model,
                                "num_workers_per_gpu": 0,
                                "args_options": "--hyp warmup_epochs=0 mosaic=0 lr0=0.02"})
    trained = run_start(work, extra_env={"YMIR_CPU_PROCESSES": processes})
    assert trained.returncode == 0, trained.output[-3000:]
    assert ("sharded" in trained.output or "batch 8 x 2" in trained.output) == (processes == "2")
    return work / "out" / "models" / "best" / "best.pt", work


def run_original(command, *args, cwd):
    """One oracle command in a process where only the original YOLOv5 is importable: isolated mode (no
    PYTHONPATH, no script folder on sys.path), started elsewhere; torch >= 2.6 refuses every YOLOv5 checkpoint
    (official ones too) unless told to unpickle its classes, as the README says."""
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    proc = subprocess.run([str(ORACLE_PYTHON), "-I", str(ORACLE_TOOL), command, *map(str, args)],
                          capture_output=True, text=True, timeout=HANG_LIMIT, cwd=str(cwd), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def letterboxed_batch(images, io_path):
    batch, _ = collate([LetterboxedImages(images, IMG_SIZE)[i] for i in range(len(images))])
    torch.save({"input": batch.float() / 255}, io_path)
    return batch


def assert_same_detections(ours, theirs, top=20, min_score=0.002, score_tol=0.02, box_tol=0.5):
    """Each image's `top` best detections (score >= min_score) of either side are among the other's (conf 0.001):
    the same class, corners within box_tol px, the score within score_tol. Returns how many were compared."""
    compared = 0
    for a_dets, b_dets in ((ours, theirs), (theirs, ours)):
        for a, b in zip(a_dets, b_dets):
            for row in a[a[:, 4] >= min_score][:top]:
                close = ((b[:, :4] - row[:4]).abs().max(1).values < box_tol) \
                    & ((b[:, 4] - row[4]).abs() < score_tol) & (b[:, 5] == row[5])
                assert close.any(), (row, b[:5])
                compared += 1
    return compared


def test_a_trained_stage_is_used_by_the_original_yolov5_as_its_own(tmp_path):
    weights, work = train_stage(tmp_path)
    data, images = yolo_dataset(work, tmp_path / "yolo")
    io_path = tmp_path / "io.pt"
    batch = letterboxed_batch(images, io_path)
    answer = run_original("use_checkpoint", weights, io_path, data, tmp_path / "runs", cwd=tmp_path)
    assert answer["classes"] == {str(i): n for i, n in enumerate(CLASS_NAMES)}
    assert answer["stride"] == [8.0, 16.0, 32.0]
    assert answer["hub_classes"] == answer["classes"]

    # our loader, the product's path: same outputs for the same file
    theirs = load_plain(io_path)
    ours, _ = Detector(build_model(read_checkpoint(weights)), torch.device("cpu"))(batch)
    assert ((ours - theirs["decoded"]).abs() / (1 + theirs["decoded"].abs())).max() < 1e-4
    our_dets = non_max_suppression(ours, 0.001, 0.6, max_det=300)
    assert sum(len(d) for d in our_dets) > 0
    for mine, other in zip(our_dets, theirs["detections"]):
        assert len(mine) == len(other)
        for row in mine:  # the same boxes, in whatever order scores that differ by rounding put them
            close = ((other[:, :4] - row[:4]).abs().max(1).values < 1e-3) & ((other[:, 4] - row[4]).abs() < 1e-4) \
                & (other[:, 5] == row[5])
            assert close.any(), row

    # torch.hub's AutoShape on the first image (letterboxed already: no padding to add) keeps what our NMS keeps
    # at its defaults (conf 0.25, IoU 0.45)
    hub = torch.tensor(answer["hub_boxes"]).reshape(-1, 6)
    mine = non_max_suppression(ours[:1], 0.25, 0.45)[0]
    assert len(hub) == len(mine) and (len(mine) == 0 or (hub[:, :4] - mine[:, :4]).abs().max() < 1e-2)

    # val.py ran on it (its mAP, from fp16 weights, next to ours from the fp32 EMA at training time)
    result = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())
    assert 0 <= answer["map50"] <= 1 and np.isfinite(answer["map50_95"])
    print("mAP@0.5 original val.py", answer["map50"], "ours", result["model_stages"]["best"]["mAP"])
    # export.py's ONNX (batch 1, its default) gives what we predict
    (onnx_file,) = answer["onnx"]
    session = onnxruntime.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    (exported, *_) = session.run(None, {session.get_inputs()[0].name: batch[:1].float().numpy() / 255})
    assert exported.shape == tuple(ours[:1].shape)
    assert (np.abs(exported - ours[:1].numpy()) / (1 + np.abs(ours[:1].numpy()))).max() < 1e-3


@pytest.mark.parametrize("model, processes", [("yolov5n6", "1"), ("yolov5n", "2")], ids=["P6", "two-processes"])
def test_stages_of_a_p6_model_and_of_ddp_training_open_in_the_originals_attempt_load(tmp_path, model, processes):
    """attempt_load with its defaults (it fuses Conv and BatchNorm, which a channels-last weight breaks) opens the
    stage of a P6 model, and the stage of a two-process training (the model wrapped in DDP, then unwrapped), and
    finds the boxes our inference finds."""
    weights, work = train_stage(tmp_path, model=model, epochs=2, processes=processes)
    images = sorted((work / "in" / "assets").iterdir())[:8]
    io_path = tmp_path / "io.pt"
    batch = letterboxed_batch(images, io_path)
    answer = run_original("detect", weights, io_path, cwd=tmp_path)
    assert answer["stride"] == ([8.0, 16.0, 32.0, 64.0] if model.endswith("6") else [8.0, 16.0, 32.0])
    theirs = load_plain(io_path)["detections"]
    decoded, _ = Detector(build_model(read_checkpoint(weights)), torch.device("cpu"))(batch)
    ours = non_max_suppression(decoded, 0.001, 0.6, max_det=300)
    assert assert_same_detections(ours, theirs) > 0
