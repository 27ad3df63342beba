"""The demo's summary: its numbers agree with the task's outputs and with the shapes drawn in the candidates."""
import json
import re

import cv2
import pytest
import torch

from tests.helpers import run_start
from tests.test_predict_task import eager_model, with_model
from ymir.local.demo import DEMO_SIZE, TRUTH_FILE, make_workdir
from ymir.local.demo_summary import matched, summary
from ymir.results import ModelStageWriter


def test_a_prediction_counts_once_and_only_for_its_own_class():
    truth = [("box", 0, 0, 10, 10), ("disc", 20, 20, 30, 30)]
    predicted = [(("box", 0, 0, 10, 10), 0.9), (("box", 1, 1, 10, 10), 0.8),  # the second finds the box taken
                 (("triangle", 20, 20, 30, 30), 0.9),  # right place, wrong class
                 (("disc", 20, 20, 30, 36), 0.5)]  # IoU 100 / 160 = 0.625
    assert matched(truth, predicted) == 2
    assert matched(truth, [(("disc", 20, 20, 30, 40), 0.5)]) == 1  # IoU 100 / 200: 0.5 is a match
    assert matched(truth, [(("disc", 20, 20, 30, 41), 0.5)]) == 0  # 100 / 210 is not


@pytest.mark.slow
def test_the_summary_counts_what_the_task_wrote(tmp_path):
    demo = tmp_path / "demo-run"
    stage = demo / "train" / "out" / "models" / "best"
    stage.mkdir(parents=True)
    (stage / "best.pt").write_bytes(b"weights")
    ModelStageWriter(demo / "train" / "out" / "models").add("best", ["best.pt"], {"mAP": 0.5, "mAP50_95": 0.25})
    mine = make_workdir(demo / "mine", "mining+infer", num_candidates=10, image_size=(DEMO_SIZE, DEMO_SIZE), seed=4,
                        config={"img_size": DEMO_SIZE, "conf_thres": 0.2})
    torch.manual_seed(0)
    with_model(mine, eager_model())
    result = run_start(mine)
    assert result.returncode == 0, result.output[-3000:]
    lines = summary(demo, 125.4)
    detection = json.loads((mine / "out" / "infer-result.json").read_text())["detection"]
    scores = [[b["score"] for b in image["boxes"] if b["score"] >= 0.25] for image in detection.values()]
    shown = sum(map(len, scores))
    assert f"inference: {shown} boxes scoring >= 0.25 on {sum(1 for s in scores if s)} of 10 images" in lines[4]
    drawn = sum(len(v) for v in json.loads((mine / TRUTH_FILE).read_text()).values())
    found = re.search(r"(\d+) of (\d+) found", lines[5])
    assert int(found.group(2)) == drawn and int(found.group(1)) <= min(drawn, shown)
    assert lines[0].endswith("['best.pt']") and "mAP@0.5 0.500   mAP@0.5:0.95 0.250" in lines[1]
    assert lines[-1] == "total time: 2m05s"
    picture = cv2.imread(str(demo / "first-candidates.png"))
    assert picture.shape == (4 * 256, 4 * 256, 3)  # 8 candidates, each twice at 256 px (scaled up), four to a row
