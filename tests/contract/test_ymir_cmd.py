"""Our outputs read by YMIR's own code (ymir-cmd 2.0.0 and 2.3.0), and /in written by it read by ours."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import YMIR_CMD_VERSIONS, make_media, ymir_cmd
from ymir.config import load_config
from ymir.dataset import read_candidates, read_split
from ymir.env import load_env
from ymir.local.demo import CLASS_NAMES
from ymir.monitor import Monitor
from ymir.paths import PathMapper
from ymir.results import Detection, ModelStageWriter, write_infer_result, write_mining_result

pytestmark = pytest.mark.parametrize("version", YMIR_CMD_VERSIONS)


def test_model_stages_pack_and_unpack(tmp_path, version):
    out = tmp_path / "out"
    writer = ModelStageWriter(out / "models", {"iou_thr": 0.5, "conf_thr": 0.001})
    for name, files, metrics in (("epoch_1", ["epoch_1.pt"], {"mAP": 0.25}),
                                 ("best", ["best.pt", "best.onnx"], {"mAP": 0.5, "mAR": 0.6, "tp": 5, "fp": 2,
                                                                      "fn": 1})):
        writer.stage_dir(name).mkdir(parents=True)
        for f in files:
            (writer.stage_dir(name) / f).write_bytes(name.encode())
        writer.add(name, files, metrics, best=name == "best")
    result = ymir_cmd(version, "pack", out, tmp_path / "work")
    assert result["ok"], result.get("trace")
    assert result["best_stage_name"] == "best"
    assert result["stages"]["best"]["mAP"] == 0.5 and result["stages"]["epoch_1"]["mAP"] == 0.25
    # what a later task finds in /in/models for each stage
    assert result["unpacked"] == {"best": ["best/best.onnx", "best/best.pt", "ymir-info.yaml"],
                                  "epoch_1": ["epoch_1/epoch_1.pt", "ymir-info.yaml"]}
    if version != "2.0.0":  # 2.0.0 ignores the extra metrics and evaluate_config
        assert result["stages"]["best"]["mAR"] == 0.6 and result["stages"]["best"]["tp"] == 5
        assert result["evaluate_config"] == {"iou_thr": 0.5, "conf_thr": 0.001}


def test_mining_result_topk(tmp_path, version):
    path = tmp_path / "result.tsv"
    write_mining_result(path, [(f"/in/assets/{i:02d}/{i:040x}.jpg", float(i % 5)) for i in range(20)])
    result = ymir_cmd(version, "topk", path, 4)
    assert result["ok"]
    assert result["ids"] == sorted(f"{i:040x}" for i in (4, 9, 14, 19))


def test_infer_result_read_by_the_platform(tmp_path, version):
    ids = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(3)]
    preds = {
        f"/in/assets/{ids[0][-2:]}/{ids[0]}.jpg": ([Detection(10.4, 20.6, 30.2, 60.9, 0.8, 1),
                                                    Detection(-5, -5, 8, 8, 0.4, 0)], (64, 48)),
        f"/in/assets/{ids[1][-2:]}/{ids[1]}.png": ([], (64, 48)),
        f"/in/assets/{ids[2][-2:]}/{ids[2]}.jpg": ([Detection(0, 0, 64, 48, 0.3, 2)], (64, 48)),
    }
    write_infer_result(tmp_path / "infer-result.json", preds, list(CLASS_NAMES))
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"class_names": list(CLASS_NAMES), "asset_ids": ids}))
    result = ymir_cmd(version, "infer", tmp_path, spec)
    assert result["ok"], result.get("trace")
    images = result["images"]
    first = images[ids[0]]
    assert [(b["x"], b["y"], b["w"], b["h"], b["class_name"]) for b in first] == [
        (10, 21, 20, 27, "disc"), (0, 0, 8, 8, "box")]  # clipped to the 64x48 image
    assert first[0]["score"] == pytest.approx(0.8)
    assert images[ids[2]][0]["class_name"] == "triangle"
    assert not images.get(ids[1])  # an empty prediction list is accepted


@pytest.mark.parametrize("failing", [False, True])
def test_monitor_parsed_by_the_platform(tmp_path, version, failing):
    path = tmp_path / "monitor.txt"
    monitor = Monitor(path, "t0000001000001abcdef1663839849", min_interval=0)
    monitor.progress(0.42)
    if failing:
        monitor.error(300002, "the train split has no usable image", ["Traceback (most recent call last):", "x"])
    result = ymir_cmd("2.3.0", "monitor", path)  # 2.0.x backend code is identical to 2.3.0's parser
    assert result["ok"], result.get("trace")
    assert result["task_id"] == "t0000001000001abcdef1663839849"
    if failing:
        assert (result["state"], result["percent"], result["state_code"]) == (4, 1.0, 300002)
        assert result["state_message"] == "the train split has no usable image"
    else:
        assert (result["state"], result["percent"]) == (2, 0.42)


def test_a_running_tasks_note_is_parsed_by_the_platform(tmp_path, version):
    """A note (code 0, the message) stays in the later progress lines and is read as the state's message."""
    path = tmp_path / "monitor.txt"
    monitor = Monitor(path, "t0000001000001abcdef1663839849", min_interval=0)
    monitor.progress(0.3)
    monitor.note("mining cannot rank:\tall 8 readable images scored 0")
    monitor.progress(0.9)
    result = ymir_cmd("2.3.0", "monitor", path)
    assert result["ok"], result.get("trace")
    assert (result["state"], result["percent"], result["state_code"]) == (2, 0.9, 0)
    assert result["state_message"] == "mining cannot rank: all 8 readable images scored 0"


@pytest.mark.parametrize("export_format", ["ark:raw", "voc:raw"])
def test_training_in_written_by_the_platform_is_read_by_us(tmp_path, version, export_format):
    media, in_dir = tmp_path / "media", tmp_path / "in"
    assets = make_media(media, 9)
    spec = {"task": "training", "in_dir": str(in_dir), "media_dir": str(media), "class_names": list(CLASS_NAMES),
            "export_format": export_format, "task_id": "t0000001000001abcdef1663839849", "assets": assets,
            "executor_config": {"epochs": "3", "gpu_id": "", "gpu_count": 0, "shm_size": "1G", "model": "yolov5n"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = ymir_cmd(version, "make-in", tmp_path / "spec.json")
    assert result["ok"], result.get("trace")

    mapper = PathMapper(in_dir, tmp_path / "out")
    env = load_env(mapper)
    config = load_config(env, mapper)
    assert env.run_training and config.training.epochs == 3 and config.training.model == "yolov5n"
    assert config.platform.class_names == CLASS_NAMES and config.platform.gpu_ids == ()
    fmt = config.platform.annotation_format
    train, report = read_split(env.training_index_file, CLASS_NAMES, fmt, mapper, "train")
    val, _ = read_split(env.val_index_file, CLASS_NAMES, fmt, mapper, "val")
    assert report.clean and len(train) == 6 and len(val) == 3
    by_sha1 = {a["sha1"]: a for a in assets}
    for sample in train + val:
        expected = by_sha1[sample.image.stem]["boxes"]
        np.testing.assert_array_equal(sample.classes, [b[0] for b in expected])
        np.testing.assert_array_equal(sample.boxes, [[x, y, x + w, y + h] for _, x, y, w, h in expected])


@pytest.mark.parametrize("task", ["mining", "infer", "mining+infer"])
def test_mining_and_infer_in_written_by_the_platform_is_read_by_us(tmp_path, version, task):
    media, in_dir = tmp_path / "media", tmp_path / "in"
    assets = make_media(media, 4)
    spec = {"task": task, "in_dir": str(in_dir), "media_dir": str(media), "class_names": list(CLASS_NAMES),
            "task_id": "t0000001000001abcdef1663839849", "assets": assets,
            "model_params_path": ["/in/models/best/best.pt"],
            "executor_config": dict(yaml.safe_load(Path("mining-template.yaml").read_text()), gpu_id="",
                                    gpu_count=0)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = ymir_cmd(version, "make-in", tmp_path / "spec.json")
    assert result["ok"], result.get("trace")
    mapper = PathMapper(in_dir, tmp_path / "out")
    env = load_env(mapper)
    config = load_config(env, mapper)
    assert (env.run_mining, env.run_infer) == ("mining" in task, "infer" in task)
    assert (config.mining is not None, config.infer is not None) == (env.run_mining, env.run_infer)
    assert config.platform.model_params_path == (mapper("/in/models/best/best.pt"),)
    candidates = read_candidates(env.candidate_index_file, mapper)
    assert sorted(p.stem for _, p in candidates) == sorted(a["sha1"] for a in assets)
    assert all(path.is_file() for _, path in candidates)
