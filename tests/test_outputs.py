"""Writers of monitor.txt, result.yaml, result.tsv and infer-result.json, as our own code reads them."""
import json

import pytest
import yaml

from ymir.monitor import Monitor
from ymir.results import (
    Detection,
    ModelStageWriter,
    write_infer_result,
    write_mining_result,
    ymir_box,
)


def test_monitor_running_lines_are_monotonic_with_fresh_timestamps(tmp_path):
    path = tmp_path / "monitor.txt"
    monitor = Monitor(path, "t1", min_interval=0)
    stamps = []
    for percent in (0.1, 0.5, 0.3, 1.7):
        monitor.progress(percent)
        task_id, stamp, shown, state = path.read_text().rstrip("\n").split("\t")
        assert task_id == "t1" and state == "2"
        stamps.append(stamp)
        assert float(shown) == pytest.approx(min(1.0, max(0.5 if percent == 0.3 else 0, percent)))
    assert len(set(stamps)) == len(stamps)
    assert [float(s) for s in stamps] == sorted(float(s) for s in stamps)


def test_a_note_is_one_field_kept_in_later_lines_and_read_back(tmp_path):
    from ymir.monitor import read_monitor_line

    path = tmp_path / "monitor.txt"
    monitor = Monitor(path, "t1", min_interval=0)
    monitor.note(" \t ")  # nothing to say: the line keeps its four fields
    assert path.read_text().rstrip("\n").split("\t")[3:] == ["2"]
    monitor.note("mining cannot rank:\n all tied")
    monitor.progress(0.7)
    assert path.read_text().rstrip("\n").split("\t")[2:] == ["0.7000", "2", "0", "mining cannot rank: all tied"]
    assert read_monitor_line(path).message == "mining cannot rank: all tied"
    assert read_monitor_line(tmp_path / "missing.txt") is None


def test_monitor_writes_are_throttled_unless_forced(tmp_path):
    path = tmp_path / "monitor.txt"
    monitor = Monitor(path, "t1", min_interval=60)
    monitor.progress(0.1, force=True)
    monitor.progress(0.2)
    assert path.read_text().split("\t")[2] == "0.1000"
    monitor.progress(0.3, force=True)
    assert path.read_text().split("\t")[2] == "0.3000"


def test_monitor_spans_map_mining_then_infer(tmp_path):
    monitor = Monitor(tmp_path / "m.txt", "t", min_interval=0)
    mining, infer = monitor.span(0.0, 0.5), monitor.span(0.5, 1.0)
    mining(0.5)
    assert monitor.percent == pytest.approx(0.25)
    infer(0.5)
    assert monitor.percent == pytest.approx(0.75)
    infer.span(0.5, 1.0)(0.5)
    assert monitor.percent == pytest.approx(0.875)


def test_monitor_error_line(tmp_path):
    path = tmp_path / "monitor.txt"
    Monitor(path, "t1").error(300002, "bad\tdata\nset", ["Traceback:", "  boom"])
    first, *trace = path.read_text().splitlines()
    assert first.split("\t")[2:] == ["1.0000", "4", "300002", "bad data set"]
    assert trace == ["Traceback:", "  boom"]


def make_stage(writer, name, files=("best.pt",)):
    folder = writer.stage_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).write_bytes(b"weights")


def test_stage_writer_lists_only_existing_regular_files(tmp_path):
    writer = ModelStageWriter(tmp_path, {"iou_thr": 0.5, "conf_thr": 0.001})
    with pytest.raises(FileNotFoundError):
        writer.add("best", ["best.pt"], {"mAP": 0.5})
    make_stage(writer, "best")
    (writer.stage_dir("best") / "link.pt").symlink_to(writer.stage_dir("best") / "best.pt")
    with pytest.raises(FileNotFoundError):
        writer.add("best", ["best.pt", "link.pt"], {"mAP": 0.5})
    with pytest.raises(ValueError):
        writer.stage_dir("epoch-1")
    writer.add("best", ["best.pt"], {"mAP": 0.5, "mAR": 1.2, "tp": 3.0, "fp": -1}, best=True, timestamp=100)
    data = yaml.safe_load((tmp_path / "result.yaml").read_text())
    assert data["best_stage_name"] == "best" and data["mAP"] == 0.5
    stage = data["model_stages"]["best"]
    assert stage == {"stage_name": "best", "files": ["best.pt"], "timestamp": 100, "mAP": 0.5, "mAR": 1.0,
                     "tp": 3, "fp": 0}
    assert data["evaluate_config"] == {"iou_thr": 0.5, "conf_thr": 0.001}


def test_stage_writer_keeps_best_and_ten_newest(tmp_path):
    writer = ModelStageWriter(tmp_path)
    make_stage(writer, "best")
    writer.add("best", ["best.pt"], {"mAP": 0.9}, best=True, timestamp=0)
    for epoch in range(1, 16):
        make_stage(writer, f"epoch_{epoch}", ["w.pt"])
        writer.add(f"epoch_{epoch}", ["w.pt"], {"mAP": 0.1}, timestamp=epoch)
    data = yaml.safe_load((tmp_path / "result.yaml").read_text())
    assert data["best_stage_name"] == "best"
    assert sorted(data["model_stages"]) == sorted(["best"] + [f"epoch_{e}" for e in range(6, 16)])
    assert not (tmp_path / "epoch_5").exists() and (tmp_path / "epoch_6" / "w.pt").exists()


def test_mining_result_sorted_descending_ties_stable(tmp_path):
    path = tmp_path / "result.tsv"
    write_mining_result(path, [("/in/a.jpg", 0.1), ("/in/b.jpg", 0.5), ("/in/c.jpg", 0.1), ("/in/d.jpg", -2.0)])
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    assert [p for p, _ in lines] == ["/in/b.jpg", "/in/a.jpg", "/in/c.jpg", "/in/d.jpg"]
    assert [float(s) for _, s in lines] == [0.5, 0.1, 0.1, -2.0]
    with pytest.raises(ValueError):
        write_mining_result(path, [("/in/a.jpg", float("nan"))])


def test_ymir_box_is_integer_and_clipped():
    assert ymir_box(Detection(-3.4, 10.6, 50.2, 200.0, 0.9, 0), 40, 100) == {"x": 0, "y": 11, "w": 40, "h": 89}
    assert ymir_box(Detection(45, 10, 60, 20, 0.9, 0), 40, 100) is None


def test_infer_result_has_every_candidate_and_known_classes_only(tmp_path):
    path = tmp_path / "infer-result.json"
    preds = {
        "/in/assets/aa/x.jpg": ([Detection(1, 2, 11, 22, 0.5, 1), Detection(0, 0, 5, 5, 0.9, 7),
                                 Detection(3, 3, 9, 9, 0.8, 0)], (100, 50)),
        "/in/assets/bb/y.png": ([], (10, 10)),
    }
    write_infer_result(path, preds, ["cat", "dog"])
    data = json.loads(path.read_text())
    assert set(data["detection"]) == {"x.jpg", "y.png"}
    assert data["detection"]["y.png"] == {"boxes": []}
    boxes = data["detection"]["x.jpg"]["boxes"]
    assert [b["class_name"] for b in boxes] == ["cat", "dog"]  # sorted by score, class 7 dropped
    assert boxes[1] == {"box": {"x": 1, "y": 2, "w": 10, "h": 20}, "class_name": "dog", "score": 0.5}
    write_infer_result(path, preds, ["cat", "dog"], protocol_version="0.0.0")
    assert "annotations" in json.loads(path.read_text())["detection"]["x.jpg"]
