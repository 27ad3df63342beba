"""Mining and inference tasks end to end through start.py, read back by YMIR's own code."""
import hashlib
import json
import os

import pytest
import torch

from models.yolo import DetectionModel
from tests.helpers import edit_yaml, load_trusted, oracle, run_start, ymir_cmd
from tests.test_images import png_claiming
from utils.checkpoint import build_model, read_checkpoint, save_checkpoint
from utils.inference import make_detector
from ymir.errors import MODEL_ERROR
from ymir.local.demo import CLASS_NAMES, make_workdir
from ymir.local.task_folder import write_asset
from ymir.mining.labelled_looks import describe_images, pack

CONFIG = {"conf_thres": 0.05, "img_size": 128, "batch_size_per_gpu": 3, "max_det": 30}


def eager_model():
    """An untrained yolov5n whose objectness prior is raised, so that it finds boxes everywhere."""
    model = DetectionModel("yolov5n", nc=3)
    with torch.no_grad():
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 5.0
    return model


def with_model(work, model, meta=None):
    """`model` saved as the task's /in/models/best/best.pt, as the platform hands a stage over."""
    weights = work / "in" / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True)
    save_checkpoint(weights, model, list(CLASS_NAMES), meta=meta)
    return weights


def workdir_with_bad_candidates(tmp_path, task, algorithm="entropy", checkpoint="ours"):
    work = make_workdir(tmp_path / "w", task, num_candidates=6, config=dict(CONFIG, mining_algorithm=algorithm))
    in_dir = work / "in"
    good = (in_dir / "candidate-index.tsv").read_text().splitlines()
    jpeg = (in_dir / good[0][len("/in/"):]).read_bytes()
    truncated = write_asset(in_dir, jpeg[: len(jpeg) // 3])
    zero = "/in/assets/00/" + hashlib.sha1(b"").hexdigest() + ".jpg"
    (in_dir / zero[len("/in/"):]).parent.mkdir(parents=True, exist_ok=True)
    (in_dir / zero[len("/in/"):]).write_bytes(b"")
    bomb = write_asset(in_dir, png_claiming(tmp_path / "bomb.png", 60000, 60000).read_bytes(), "png")
    fifo = "/in/assets/ff/" + "f" * 40 + ".jpg"  # a named pipe nobody writes to: reading it would block
    (in_dir / fifo[len("/in/"):]).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(in_dir / fifo[len("/in/"):])
    bad = [truncated, zero, bomb, fifo]
    (in_dir / "candidate-index.tsv").write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    weights = in_dir / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint == "ours":
        torch.manual_seed(0)
        save_checkpoint(weights, eager_model(), list(CLASS_NAMES))
    else:
        oracle("checkpoint", "yolov5n", 3, weights, tmp_path / "io.pt", 0, 128, 5.0)
    return work, good, bad


def check_outputs(work, good, bad, mining=True, infer=True):
    out = work / "out"
    everything = good[:3] + bad + good[3:]
    if mining:
        lines = [line.split("\t") for line in (out / "result.tsv").read_text().splitlines()]
        assert sorted(p for p, _ in lines) == sorted(everything)
        scores = {p: float(s) for p, s in lines}
        assert all(scores[b] == -1.0 for b in bad) and all(scores[g] >= 0 for g in good)
        assert [p for p, _ in lines][-len(bad):] == bad  # lowest, in input order
        assert [float(s) for _, s in lines] == sorted((float(s) for _, s in lines), reverse=True)
    if infer:
        detection = json.loads((out / "infer-result.json").read_text())["detection"]
        assert sorted(detection) == sorted(p.rsplit("/", 1)[1] for p in everything)
        assert all(detection[b.rsplit("/", 1)[1]] == {"boxes": []} for b in bad)
        boxes = [b for image in detection.values() for b in image["boxes"]]
        assert boxes and all(isinstance(v, int) for b in boxes for v in b["box"].values())
        assert {b["class_name"] for b in boxes} <= set(CLASS_NAMES)


@pytest.mark.parametrize("algorithm", ["entropy", "aldd", "cald", "diverse", "random"])
def test_mining_plus_inference(tmp_path, algorithm):
    work, good, bad = workdir_with_bad_candidates(tmp_path, "mining+infer", algorithm)
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    check_outputs(work, good, bad)
    assert "4 candidate image(s) could not be read" in result.output
    written = sum(len(image["boxes"]) for image in
                  json.loads((work / "out" / "infer-result.json").read_text())["detection"].values())
    assert f"infer-result.json ({written} boxes)" in result.output  # the count of what the file holds
    assert result.monitor_fields[2:4] == ["1.0000", "2"]
    check_mining_report(work, len(bad))
    for version in ("2.0.0", "2.3.0"):
        ids = [p.rsplit("/", 1)[1].split(".")[0] for p in good + bad]
        topk = ymir_cmd(version, "topk", work / "out" / "result.tsv", 3)
        assert topk["ok"] and len(topk["ids"]) == 3 and not set(topk["ids"]) & set(ids[-len(bad):])
        spec = work / "spec.json"
        spec.write_text(json.dumps({"class_names": list(CLASS_NAMES), "asset_ids": ids}))
        read = ymir_cmd(version, "infer", work / "out", spec)
        assert read["ok"], read.get("trace")
        assert sum(len(v) for v in read["images"].values()) > 0


def check_mining_report(work, unreadable):
    """The report beside result.tsv agrees with result.tsv and infer-result.json, and its picture is a PNG."""
    report = json.loads((work / "out" / "mining-report.json").read_text())
    lines = (work / "out" / "result.tsv").read_text().splitlines()
    whole = report["prefixes"]["all"]
    assert (whole["images"], whole["unreadable"]) == (len(lines), unreadable)
    scores = {line.split("\t")[0].rsplit("/", 1)[1]: float(line.split("\t")[1]) for line in lines}
    readable = [s for s in scores.values() if s >= 0]
    assert (report["scores"]["max"], report["scores"]["min"]) == (max(readable), min(readable))
    assert sum(report["scores"]["counts"]) == len(readable) == report["scores"]["count"]
    assert report["candidates"] == len(lines)
    tied = len(set(readable)) == 1 and report["ranking"]["algorithm"] != "random"  # the eager model can tie all
    assert report["ranking"]["order"] == ("random draw from seed 0" if tied else "by score")
    detection = json.loads((work / "out" / "infer-result.json").read_text())["detection"]
    shown = [[b for b in detection[name]["boxes"] if b["score"] >= 0.25] for name, s in scores.items() if s >= 0]
    assert whole["boxes_per_image"] == pytest.approx(sum(map(len, shown)) / len(readable), abs=1e-3)
    assert whole["predicted_empty_share"] == pytest.approx(sum(1 for b in shown if not b) / len(readable), abs=1e-4)
    assert sum(whole["boxes_per_class"].values()) == sum(map(len, shown))
    assert (work / "out" / "mining-report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_are_deterministic(tmp_path):
    work, _, _ = workdir_with_bad_candidates(tmp_path, "mining+infer", "cald")
    assert run_start(work).returncode == 0
    first = [(work / "out" / f).read_bytes() for f in ("result.tsv", "infer-result.json")]
    for f in ("result.tsv", "infer-result.json"):
        (work / "out" / f).unlink()
    assert run_start(work).returncode == 0
    assert first == [(work / "out" / f).read_bytes() for f in ("result.tsv", "infer-result.json")]


def test_official_checkpoint_runs_inference(tmp_path):
    work, good, bad = workdir_with_bad_candidates(tmp_path, "infer", checkpoint="official")
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    check_outputs(work, good, bad, mining=False)
    assert "(yolov5, 3 classes)" in result.output


def test_random_mining_needs_no_model(tmp_path):
    work = make_workdir(tmp_path / "w", "mining", num_candidates=5, config={"mining_algorithm": "random", "seed": 4})
    result = run_start(work)
    assert result.returncode == 0, result.output[-2000:]
    assert len((work / "out" / "result.tsv").read_text().splitlines()) == 5
    report = json.loads((work / "out" / "mining-report.json").read_text())
    assert report["ranking"] == {"algorithm": "random", "order": "by score"}
    assert report["prefixes"]["all"] == {"images": 5, "unreadable": 0}  # no model ran: nothing predicted


def test_missing_weights_is_a_model_error(tmp_path):
    work = make_workdir(tmp_path / "w", "infer", num_candidates=2)
    (work / "in" / "models" / "notes.txt").write_text("no weights here")
    result = run_start(work)
    fields = result.monitor_fields
    assert result.returncode != 0 and fields[3:5] == ["4", str(MODEL_ERROR)]
    assert "no model weights" in fields[5] and "notes.txt" in fields[5]


def test_malicious_weights_are_refused(tmp_path):
    work = make_workdir(tmp_path / "w", "infer", num_candidates=2)
    marker = tmp_path / "pwned"

    class Bomb:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (work / "in" / "models" / "best").mkdir(parents=True)
    torch.save({"model": Bomb()}, str(work / "in" / "models" / "best" / "best.pt"))
    result = run_start(work)
    assert result.returncode != 0 and result.monitor_fields[3:5] == ["4", str(MODEL_ERROR)]
    assert "refused" in result.last_lines[-1] and not marker.exists()


def test_class_names_that_do_not_fit_the_model(tmp_path):
    work, _, _ = workdir_with_bad_candidates(tmp_path, "infer")
    edit_yaml(work / "in" / "config.yaml", class_names=["a", "b"])
    result = run_start(work)
    assert result.monitor_fields[3:5] == ["4", str(MODEL_ERROR)] and "3 classes" in result.last_lines[-1]


@pytest.mark.parametrize("task", ["infer", "training"])
def test_a_checkpoint_naming_an_unknown_layer_is_a_model_error(tmp_path, task):
    work = make_workdir(tmp_path / "w", task, num_candidates=2, num_train=4, num_val=2)
    weights = work / "in" / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True)
    save_checkpoint(weights, DetectionModel("yolov5n", nc=3), list(CLASS_NAMES))
    raw = load_trusted(weights)
    raw["ymir"]["yaml"]["backbone"][0][2] = "Evil"
    torch.save(raw, str(weights))
    key = "pretrained_model_params" if task == "training" else "model_params_path"
    edit_yaml(work / "in" / "config.yaml", **{key: ["/in/models/best/best.pt"]})
    result = run_start(work)
    assert result.returncode != 0 and result.monitor_fields[3:5] == ["4", str(MODEL_ERROR)], result.output[-2000:]
    assert "unsupported module 'Evil'" in result.last_lines[-1]
    assert len(result.monitor.splitlines()[0].split("\t")) == 6  # code and a one-line message


def test_a_p6_model_at_a_size_only_32_divides_is_run_at_the_next_multiple_of_64(tmp_path):
    """img_size 672 is accepted (a multiple of 32) but a P6 model's 64-stride level needs a multiple of 64."""
    work = make_workdir(tmp_path / "w", "mining+infer", num_candidates=2,
                        config={"img_size": 672, "batch_size_per_gpu": 2, "mining_algorithm": "aldd"})
    torch.manual_seed(0)
    with_model(work, DetectionModel("yolov5n6", nc=3))
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    assert "img_size 672 is not a multiple of the model's largest stride 64: using 704" in result.output
    scores = [float(line.split("\t")[1]) for line in (work / "out" / "result.tsv").read_text().splitlines()]
    assert len(scores) == 2 and min(scores) >= 0


def test_mining_without_a_size_runs_at_the_size_the_model_was_trained_at(tmp_path):
    """The same result.tsv and infer-result.json with img_size left to the template (0), set to the training
    size, or set to 640 (the earlier templates' default); force_img_size makes 640 a choice. The log names it."""
    outputs, logs = {}, {}
    for name, changes in (("template", {"img_size": None}), ("explicit", {"img_size": 64}),
                          ("old-default", {"img_size": 640}), ("forced", {"img_size": 640, "force_img_size": True})):
        work = make_workdir(tmp_path / name, "mining+infer", num_candidates=4, config=CONFIG)
        edit_yaml(work / "in" / "config.yaml", **changes)
        torch.manual_seed(0)
        with_model(work, eager_model(), meta={"img_size": 64})
        result = run_start(work)
        assert result.returncode == 0, result.output[-3000:]
        outputs[name] = [(work / "out" / f).read_text() for f in ("result.tsv", "infer-result.json")]
        logs[name] = result.output
    assert outputs["template"] == outputs["explicit"] == outputs["old-default"] != outputs["forced"]
    assert "image size 64: the size the model was trained at" in logs["template"]
    assert "image size 64 (config img_size)" in logs["explicit"]
    assert "img_size 640, the earlier templates' default, is taken as unset: running at 64" in logs["old-default"]
    assert "image size 640 (config img_size), but the model was trained at 64" in logs["forced"]


def test_mining_that_cannot_rank_says_so_and_breaks_ties_by_seed(tmp_path):
    """An untrained model detects nothing anywhere: every candidate gets the same score. The log says so and the
    order is a seeded draw (the same for the same seed), not the index's order."""
    orders = {}
    for seed in (0, 0, 1):
        work = make_workdir(tmp_path / f"s{seed}-{len(orders)}", "mining", num_candidates=8, config=CONFIG)
        edit_yaml(work / "in" / "config.yaml", seed=seed)
        torch.manual_seed(0)
        with_model(work, DetectionModel("yolov5n", nc=3))
        result = run_start(work)
        assert result.returncode == 0, result.output[-3000:]
        assert "mining cannot rank these candidates: all 8 readable images scored" in result.output
        assert "the model detects nothing in the whole pool" in result.output
        report = json.loads((work / "out" / "mining-report.json").read_text())
        assert report["ranking"]["order"] == f"random draw from seed {seed}"
        assert "the model detects nothing in the whole pool" in report["ranking"]["why"]
        assert report["prefixes"]["all"]["predicted_empty_share"] == 1.0
        monitor = ymir_cmd("2.3.0", "monitor", work / "out" / "monitor.txt")
        assert (monitor["state"], monitor["percent"], monitor["state_code"]) == (2, 1.0, 0)
        assert monitor["state_message"].startswith("mining cannot rank: all 8 readable images scored")
        lines = [line.split("\t") for line in (work / "out" / "result.tsv").read_text().splitlines()]
        assert len({score for _, score in lines}) == 1
        index = (work / "in" / "candidate-index.tsv").read_text().split()
        orders.setdefault(seed, []).append([index.index(path) for path, _ in lines])
    assert orders[0][0] == orders[0][1] != orders[1][0]
    assert orders[0][0] != sorted(orders[0][0])


def test_diverse_walks_away_from_the_images_the_model_was_trained_on(tmp_path):
    """A model whose checkpoint describes two of the candidates as labelled images (as training records them):
    diverse mining says it starts from them, and ranks those two below every other candidate."""
    work = make_workdir(tmp_path / "w", "mining", num_candidates=6, config=dict(CONFIG, mining_algorithm="diverse"))
    in_dir = work / "in"
    listed = (in_dir / "candidate-index.tsv").read_text().split()
    torch.manual_seed(0)
    weights = with_model(work, eager_model())
    ckpt = read_checkpoint(weights)
    model = build_model(ckpt)
    anchors = model.detect.na
    looks = describe_images(make_detector(model, torch.device("cpu"), 128, features=True),
                            [in_dir / path[len("/in/"):] for path in listed[:2]], 128, 3, anchors, 0.45,
                            CONFIG["max_det"], 2, 0)
    assert len(looks) == 2
    save_checkpoint(weights, build_model(ckpt), list(CLASS_NAMES),
                    meta={"labelled_looks": pack(looks, 3, 128, 0.45, CONFIG["max_det"])})
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    assert "the walk starts from 2 labelled images" in result.output
    ranked = [line.split("\t")[0] for line in (work / "out" / "result.tsv").read_text().splitlines()]
    assert sorted(ranked[-2:]) == sorted(listed[:2]), ranked
