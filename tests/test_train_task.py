"""Training through start.py on tiny generated datasets: stages YMIR accepts, each weights origin, reports."""
import csv
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from models.yolo import DetectionModel
from tests.helpers import HANG_LIMIT, START, edit_yaml, load_trusted, make_read_only, oracle, run_start, ymir_cmd
from utils.checkpoint import read_checkpoint, save_checkpoint
from ymir.errors import CONFIG_ERROR, MODEL_ERROR
from ymir.local.demo import CLASS_NAMES, make_workdir
from ymir.mining.diverse import recorded_class_ap
from ymir.mining.labelled_looks import unpack as unpack_looks

FAST = {"epochs": 2, "img_size": 96, "batch_size_per_gpu": 8, "num_workers_per_gpu": 0}


def training_workdir(tmp_path, **config):
    return make_workdir(tmp_path / "w", "training", num_train=12, num_val=6, image_size=(96, 128),
                        config=dict(FAST, **config))


def test_training_writes_stages_the_platform_packs(tmp_path):
    work = training_workdir(tmp_path)
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    out = work / "out"
    data = yaml.safe_load((out / "models" / "result.yaml").read_text())
    assert data["best_stage_name"] == "best" and list(data["model_stages"]) == ["best"]
    best = data["model_stages"]["best"]
    assert best["files"] == ["best.pt", "best.onnx"] and 0.0 <= best["mAP"] <= 1.0
    assert isinstance(best["mAP"], float) and isinstance(best["tp"], int)
    assert data["evaluate_config"] == {"iou_thr": 0.5, "conf_thr": 0.001}
    ckpt = read_checkpoint(out / "models" / "best" / "best.pt")
    assert ckpt.names == list(CLASS_NAMES) and ckpt.epoch in (1, 2)
    stored = load_trusted(out / "models" / "best" / "best.pt")
    assert stored["ymir"]["format_version"] == 2 and stored["ema"] is None  # YOLOv5's own layout
    assert stored["opt"]["epochs"] == 2 and stored["opt"]["imgsz"] == 96 and stored["model"].hyp["lr0"] > 0
    assert stored["best_fitness"] == pytest.approx(ckpt.meta["metrics"]["mAP"])
    assert all(v.dtype == torch.float16 for v in stored["model"].state_dict().values() if v.is_floating_point())
    assert sum(ckpt.meta["class_histogram"]) > 0
    # the labelled images as the best model sees them (none, where this barely trained model finds no box)
    record = ckpt.meta["labelled_looks"]
    assert (record["version"], record["img_size"], record["iou_thres"], record["max_det"]) == (1, 96, 0.45, 1000)
    looks = unpack_looks(record, 3, 96)
    assert record["images"] == (0 if looks is None else len(looks)) <= 12 + 6
    assert "labelled images described for diverse mining" in result.output
    # AP@0.5 per class for diverse mining: a number for each class the validation set holds, None for the others
    val = (work / "in" / "val-index.tsv").read_text().split()[1::2]
    held = {int(line.split(",")[0]) for anno in val for line in (work / anno[1:]).read_text().splitlines()}
    recorded = ckpt.meta["class_ap50"]
    assert recorded_class_ap(recorded, 3) == recorded and {c for c, ap in enumerate(recorded) if ap is not None} == held
    for version in ("2.0.0", "2.3.0"):
        packed = ymir_cmd(version, "pack", out, tmp_path / f"pack-{version}")
        assert packed["ok"], packed.get("trace")
        assert packed["unpacked"]["best"] == ["best/best.onnx", "best/best.pt", "ymir-info.yaml"]
    rows = list(csv.DictReader((out / "tensorboard" / "results.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert result.monitor_fields[2:4] == ["1.0000", "2"]
    assert "random initialisation" in result.output.lower()
    assert "best model: epoch" in result.output
    # every epoch's line tells the time left for the whole training, the last one how long it took
    epoch_lines = [line for line in result.output.splitlines() if re.search(r" epoch \d+/2 ", line)]
    assert len(epoch_lines) == 2
    took = r"(\d+ s|\d+m\d\ds|\d+h\d\dm)"  # utils.progress.duration, however slow the machine
    assert re.search(rf"elapsed {took}, ETA {took}\)$", epoch_lines[0]), epoch_lines[0]
    assert re.search(rf"training done in {took}\)$", epoch_lines[1]), epoch_lines[1]


def test_epoch_stages_when_not_best_only(tmp_path):
    work = training_workdir(tmp_path, save_best_only=False, save_period=1, epochs=3)
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    data = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())
    assert sorted(data["model_stages"]) == ["best", "epoch_1", "epoch_2", "epoch_3"]
    assert data["model_stages"]["epoch_2"]["files"] == ["epoch_2.pt"]
    assert (work / "out" / "models" / "epoch_3" / "epoch_3.pt").is_file()


def test_pretrained_model_from_the_platform(tmp_path):
    work = training_workdir(tmp_path, epochs=1)
    weights = work / "in" / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True)
    save_checkpoint(weights, DetectionModel("yolov5s", nc=3), list(CLASS_NAMES))
    edit_yaml(work / "in" / "config.yaml", pretrained_model_params=["/in/models/best/best.pt"], model="yolov5n")
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    assert "the pretrained model's architecture (yolov5s) is used" in result.output
    assert "transferred 348/349 tensors" in result.output  # everything but the anchors, which come from the yaml
    assert read_checkpoint(work / "out" / "models" / "best" / "best.pt").state_dict[
        "model.0.conv.weight"].shape[0] == 32  # yolov5s width


def test_bundled_official_weights(tmp_path):
    work = training_workdir(tmp_path, epochs=1)
    bundled = tmp_path / "weights"
    bundled.mkdir()
    oracle("checkpoint", "yolov5n", 80, bundled / "yolov5n.pt", tmp_path / "io.pt", 0, 64)
    result = run_start(work, extra_env={"YOLOV5_WEIGHTS_DIR": str(bundled)})
    assert result.returncode == 0, result.output[-3000:]
    assert "official yolov5n weights" in result.output
    # all but the anchors and the class-dependent head convolutions (3 weights + 3 biases)
    assert "transferred 342/349 tensors" in result.output


def test_unusable_pretrained_model_is_a_model_error(tmp_path):
    work = training_workdir(tmp_path)
    (work / "in" / "models" / "best").mkdir(parents=True)
    (work / "in" / "models" / "best" / "best.pt").write_bytes(b"garbage")
    edit_yaml(work / "in" / "config.yaml", pretrained_model_params=["/in/models/best/best.pt"])
    result = run_start(work)
    assert result.monitor_fields[3:5] == ["4", str(MODEL_ERROR)]


@pytest.mark.parametrize("options,needle", [
    ("--exist-ok --project /tmp/x", "--project"),
    ("--evolve 300", "--evolve"),
    ("--optimizer Lion", "--optimizer"),
    ("--hyp lr0=fast", "lr0"),
    ("--seed 99999999999999999999", "--seed 99999999999999999999 must be in [0, 2^32)"),
    ("--hyp scale=5 fliplr=0.5", "--hyp scale=5 is outside [0, 1)"),
    ("--hyp degrees=1e308", "--hyp degrees=1e+308 is outside [0, 180]"),
    ("--hyp lr0=nan", "--hyp lr0=nan is outside (0, 10]"),
    ("--freeze 1000", "--freeze 1000 would freeze every layer of yolov5n (25 layers"),
])
def test_bad_args_options_are_rejected_by_name(tmp_path, options, needle):
    work = training_workdir(tmp_path, args_options=options)
    result = run_start(work)
    assert result.returncode != 0 and result.monitor_fields[3:5] == ["4", str(CONFIG_ERROR)]
    assert needle in result.last_lines[-1] and "args_options" in result.last_lines[-1]
    assert "epoch" not in result.output.lower()  # refused before any work


def test_training_learns_an_easy_dataset(tmp_path):
    """Learning, with a margin that holds on every CPU. Training from scratch is chaotic in float rounding (AVX2,
    AVX-512 and AMX kernels round differently, and the differences grow), so the test is built to end far past
    the take-off whenever it happens: one class (--single-cls) of large high-contrast shapes at 64 px, 144
    optimizer steps (36 epochs of 256 images at the nominal batch of 64), validated on 64 images. Best mAP@0.5
    measured on an AVX-512/AMX Xeon: 0.975 natively, 0.949 with ATEN_CPU_CAPABILITY=avx2, 0.885 with =default
    (take-off between epochs 12 and 24), box loss 0.124 -> 0.041 in all three."""
    work = make_workdir(tmp_path / "w", "training", num_train=256, num_val=64, image_size=(64, 64), seed=3,
                        config={"epochs": 36, "img_size": 64, "batch_size_per_gpu": 64, "num_workers_per_gpu": 1,
                                "model": "yolov5n",
                                "args_options": "--single-cls --hyp warmup_epochs=0 mosaic=0 lr0=0.02"})
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    best = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())["model_stages"]["best"]
    rows = list(csv.DictReader((work / "out" / "tensorboard" / "results.csv").open()))
    first = float(rows[0]["metrics/mAP_0.5"])
    assert best["mAP"] > 0.5 and first < 0.05, (first, best["mAP"])
    assert float(rows[-1]["train/box_loss"]) < 0.5 * float(rows[0]["train/box_loss"])
    # the learnt model describes the labelled images it finds boxes in, for diverse mining
    ckpt = read_checkpoint(work / "out" / "models" / "best" / "best.pt")
    looks = unpack_looks(ckpt.meta["labelled_looks"], 1, 64)
    assert 0.5 * (256 + 64) < len(looks) <= 256 + 64, len(looks)
    assert np.allclose(np.linalg.norm(looks, axis=1), 1.0, atol=1e-5)
    assert f"best model: {ckpt.meta['labelled_looks']['images']} labelled images described" in result.output
    # YOLOv5's linear schedule (lrf 0.01) with its one-epoch lag: epoch e trains at lr0 * lf(max(e - 1, 0))
    lf = [(1 - x / 36) * 0.99 + 0.01 for x in range(36)]
    expected_lrs = [0.02 * lf[max(e - 1, 0)] for e in range(36)]
    assert [float(r["x/lr0"]) for r in rows] == pytest.approx(expected_lrs, rel=1e-5)


def test_an_opset_this_torch_cannot_write_is_a_config_error_before_training(tmp_path):
    from utils.export import max_onnx_opset

    work = training_workdir(tmp_path, opset=max_onnx_opset() + 1)
    result = run_start(work)
    assert result.monitor_fields[3:5] == ["4", str(CONFIG_ERROR)]
    assert "'opset'" in result.last_lines[-1] and str(max_onnx_opset()) in result.last_lines[-1]
    assert "epoch" not in result.output.lower()


def test_best_stage_lists_weights_at_once_and_onnx_of_the_same_model(tmp_path, monkeypatch):
    """A new best's weights are listed immediately; its ONNX comes at the refresh interval or at the end, and an
    older best's ONNX is never listed beside newer weights."""
    import numpy as np
    import onnxruntime

    import ymir.tasks.train as train_task
    from utils.metrics import DetectionMetrics
    from utils.train_settings import TrainSettings
    from utils.trainer import EpochReport
    from ymir.config import TrainingConfig

    def report(epoch, map50):
        return EpochReport(epoch, [0.0] * 3, [0.0] * 3, DetectionMetrics(0.5, 0.5, map50, map50 / 2, 1, 1, 1), True,
                           1.0)

    def stage():
        return yaml.safe_load((tmp_path / "result.yaml").read_text())["model_stages"]["best"]

    saver = train_task.StageSaver(tmp_path, TrainingConfig(model="yolov5n"), ["a", "b"],
                                  TrainSettings(model="yolov5n", img_size=64), [1, 1])
    torch.manual_seed(0)
    first, second = DetectionModel("yolov5n", nc=2).eval(), DetectionModel("yolov5n", nc=2).eval()

    saver.epoch_end(report(0, 0.1), first)  # within the refresh interval: weights only
    assert stage()["files"] == ["best.pt"] and not (tmp_path / "best" / "best.onnx").exists()

    monkeypatch.setattr(train_task, "ONNX_REFRESH_S", 0)
    saver.epoch_end(report(1, 0.2), first)  # interval passed: weights and ONNX
    assert stage()["files"] == ["best.pt", "best.onnx"] and stage()["mAP"] == 0.2

    monkeypatch.setattr(train_task, "ONNX_REFRESH_S", 10 ** 6)
    saver.epoch_end(report(2, 0.3), second)  # the older ONNX goes
    assert stage()["files"] == ["best.pt"] and not (tmp_path / "best" / "best.onnx").exists()

    saver.finish()  # the end exports the saved best weights
    assert stage()["files"] == ["best.pt", "best.onnx"] and stage()["mAP"] == 0.3
    x = torch.rand(1, 3, 64, 64)
    session = onnxruntime.InferenceSession(str(tmp_path / "best" / "best.onnx"), providers=["CPUExecutionProvider"])
    saved = read_checkpoint(tmp_path / "best" / "best.pt")
    model = DetectionModel(saved.yaml, nc=2)
    model.load_state_dict({k: v.float() for k, v in saved.state_dict.items()})
    with torch.no_grad():
        expected = model.eval()(x)[0].numpy()
    np.testing.assert_allclose(session.run(None, {"images": x.numpy()})[0], expected, atol=1e-3)


def test_a_training_stopped_by_sigterm_says_so_in_one_line_and_names_what_it_kept(tmp_path):
    work = training_workdir(tmp_path, epochs=500)
    make_read_only(work / "in")
    proc = subprocess.Popen([sys.executable, str(START), "--in", str(work / "in"), "--out", str(work / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    result_yaml = work / "out" / "models" / "result.yaml"
    deadline = time.monotonic() + HANG_LIMIT
    while not result_yaml.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # the first epoch's best stage is written
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=HANG_LIMIT)
    assert proc.returncode != 0
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert last.startswith("stopped by signal SIGTERM; kept: stage 'best' (best.pt"), last
    fields = (work / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    assert fields[3] == "4" and fields[5] == last
