"""Every mining algorithm, end to end as the platform runs it: /in written by YMIR's own code (`mir mining`'s
preparation, ymir-cmd 2.3.0), our start.py, and result.tsv read back by both platform versions."""
import json

import pytest
import torch
import yaml

from models.yolo import DetectionModel
from tests.helpers import REPO, YMIR_CMD_VERSIONS, make_media, run_start, ymir_cmd
from utils.checkpoint import save_checkpoint
from ymir.local.demo import CLASS_NAMES
from ymir.mining.registry import NAMES

CANDIDATES = 8


@pytest.mark.parametrize("algorithm", NAMES)
def test_each_algorithm_mines_what_the_platform_prepared_and_the_platform_takes_its_top(tmp_path, algorithm):
    media, in_dir = tmp_path / "media", tmp_path / "task" / "in"
    assets = make_media(media, CANDIDATES, seed=2)
    template = yaml.safe_load((REPO / "mining-template.yaml").read_text())
    spec = {"task": "mining", "in_dir": str(in_dir), "media_dir": str(media), "class_names": list(CLASS_NAMES),
            "task_id": "t0000001000001abcdef1663839849", "assets": assets,
            "model_params_path": ["/in/models/best/best.pt"],
            "executor_config": dict(template, mining_algorithm=algorithm, img_size=128, num_workers_per_gpu=0,
                                    gpu_id="", gpu_count=0)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    prepared = ymir_cmd("2.3.0", "make-in", tmp_path / "spec.json")
    assert prepared["ok"], prepared.get("trace")
    model = DetectionModel("yolov5n", nc=len(CLASS_NAMES))
    with torch.no_grad():  # an untrained model that detects: every algorithm has boxes to weigh
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 5.0
    (in_dir / "models" / "best").mkdir(parents=True)
    save_checkpoint(in_dir / "models" / "best" / "best.pt", model, list(CLASS_NAMES))
    (tmp_path / "task" / "out").mkdir()

    result = run_start(tmp_path / "task")
    assert result.returncode == 0, result.output[-3000:]
    lines = (tmp_path / "task" / "out" / "result.tsv").read_text().splitlines()
    scores = [float(line.split("\t")[1]) for line in lines]
    assert len(lines) == CANDIDATES and scores == sorted(scores, reverse=True)
    ids = [line.split("\t")[0].rsplit("/", 1)[1].split(".")[0] for line in lines]
    assert sorted(ids) == sorted(a["sha1"] for a in assets)
    first = {i for i, score in zip(ids, scores) if score >= scores[2]}  # our first 3 lines (and any tied with them)
    for version in YMIR_CMD_VERSIONS:
        top = ymir_cmd(version, "topk", tmp_path / "task" / "out" / "result.tsv", 3)
        assert top["ok"], top.get("trace")
        assert len(top["ids"]) == 3 and set(top["ids"]) <= first, version
