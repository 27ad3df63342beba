"""`python -m ymir.local.task_folder`: a user's YOLO or VOC dataset made into a task folder that reads back right."""
import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from models.yolo import DetectionModel
from utils.checkpoint import save_checkpoint
from ymir.dataset import read_split
from ymir.local.dataset_folder import yolo_boxes
from ymir.local.task_folder import main
from ymir.paths import PathMapper


def jpeg(path: Path, width: int = 200, height: int = 100) -> None:
    """A small image whose bytes differ from every other one's (the same bytes are one image to YMIR): noise
    drawn from the file's path, so that no two paths give equal pictures (a single grey level drawn from 256 made
    two of seven images equal about once in twelve runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seed = int.from_bytes(hashlib.sha1(str(path).encode()).digest()[:8], "big")
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.write_bytes(cv2.imencode(path.suffix, pixels)[1].tobytes())


def read_back(root: Path, split: str, names):
    config = yaml.safe_load((root / "in/config.yaml").read_text())
    samples, _ = read_split(root / f"in/{split}-index.tsv", names, config["export_format"].split(":")[0],
                            PathMapper(root / "in", root / "out"), split)
    return samples


def test_yolo_fractions_become_inclusive_pixel_corners():
    boxes, problems = yolo_boxes("1 0.5 0.5 0.5 0.2\n0 0.05 0.5 0.2 1.4\n", 200, 100, 2)
    # 1: centre (100, 50), 100 x 20 px -> pixels 50..149 x 40..59; 0: clipped to the image
    assert boxes == [(1, 50, 40, 149, 59), (0, 0, 0, 29, 99)] and problems == []
    boxes, problems = yolo_boxes("2 0.5 0.5 0.1 0.1\n0 0.5 0.5\nx 1 1 1 1\n", 200, 100, 2)
    assert boxes == [] and [p.split(":")[0] for p in problems] == ["line 1", "line 2", "line 3"]
    _, problems = yolo_boxes("0 160 120 50 50\n", 200, 100, 2)  # pixels, not fractions: said so
    assert "YOLO labels hold fractions of the image's width and height, not pixels" in problems[0]


def test_a_yolo_dataset_becomes_a_training_task(tmp_path, capsys):
    data = tmp_path / "dataset"
    for i in range(6):
        jpeg(data / f"images/img{i}.jpg")
        (data / f"labels/img{i}.txt").parent.mkdir(parents=True, exist_ok=True)
        (data / f"labels/img{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.5 0.2\n")
    (data / "labels/img5.txt").write_text("0 0.5 0.5 0.5 0.2\n7 0.5 0.5 0.1 0.1\n")  # one line of a 3rd class
    jpeg(data / "images/unlabelled.jpg")  # background image: no label file
    shutil.copy(data / "images/img0.jpg", data / "images/zz-copy.jpg")  # the same image twice
    (data / "images/broken.jpg").write_bytes(b"not an image")
    (data / "classes.txt").write_text("cat\ndog\n")

    assert main([str(tmp_path / "task"), "--images", str(data / "images"), "--set", "epochs=3"]) == 0
    out, err = capsys.readouterr()
    assert "6 training + 1 validation images, 6 boxes" in out and "1 without a label file (no objects)" in out
    assert "broken.jpg: not a readable image" in err and "img5.txt: line 2: class 7 has no name" in err
    assert "zz-copy.jpg: the same image as" in err

    config = yaml.safe_load((tmp_path / "task/in/config.yaml").read_text())
    assert config["class_names"] == ["cat", "dog"] and config["epochs"] == 3
    assert config["export_format"] == "ark:raw"
    samples = read_back(tmp_path / "task", "train", ["cat", "dog"]) + read_back(tmp_path / "task", "val",
                                                                               ["cat", "dog"])
    assert len(samples) == 7 and sorted(len(s.boxes) for s in samples) == [0, 1, 1, 1, 1, 1, 1]
    for sample in samples:  # exclusive corners after reading: 50..150 x 40..60
        assert all(box.tolist() == [50, 40, 150, 60] for box in sample.boxes)
    assert (tmp_path / "task/out").is_dir() and not any((tmp_path / "task/out/models").iterdir())
    sources = dict(line.split("\t") for line in (tmp_path / "task/sources.tsv").read_text().splitlines())
    assert sorted(Path(s).name for s in sources.values()) == [f"img{i}.jpg" for i in range(6)] + ["unlabelled.jpg"]
    assert all((tmp_path / "task/in" / p[len("/in/"):]).read_bytes() == Path(s).read_bytes()
               for p, s in sources.items())


def test_a_dataset_whose_labels_are_not_where_the_format_puts_them_is_refused(tmp_path, capsys):
    jpeg(tmp_path / "JPEGImages/a.jpg")
    jpeg(tmp_path / "JPEGImages/b.jpg")
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations/a.xml").write_text("<annotation/>")
    assert main([str(tmp_path / "task"), "--images", str(tmp_path / "JPEGImages"), "--names", "cat"]) == 2
    err = capsys.readouterr().err
    assert "no label file for any of the 2 images" in err and "another format: --labels" in err


def test_a_voc_dataset_with_its_own_validation_folder(tmp_path, capsys):
    def voc(folder: Path, name: str, cls: str):
        jpeg(folder / f"JPEGImages/{name}.jpg")
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        (folder / f"Annotations/{name}.xml").write_text(
            f"<annotation><object><name>{cls}</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>59</xmax>"
            "<ymax>79</ymax></bndbox></object></annotation>")

    for i, cls in enumerate(("Dog", "cat", "dog")):
        voc(tmp_path / "train", f"t{i}", cls)
    voc(tmp_path / "val", "v0", "cat")
    (tmp_path / "train/Annotations/t2.xml").write_text("<annotation><object>")  # malformed: left out

    assert main([str(tmp_path / "task"), "--images", str(tmp_path / "train/JPEGImages"), "--labels", "voc",
                 "--val-images", str(tmp_path / "val/JPEGImages")]) == 0
    out, err = capsys.readouterr()
    assert "2 training + 1 validation images, 3 boxes, classes ['cat', 'dog']" in out
    assert "t2.xml: malformed XML" in err
    train = read_back(tmp_path / "task", "train", ["cat", "dog"])
    assert sorted(s.classes.tolist()[0] for s in train) == [0, 1]
    assert train[0].boxes.tolist() == [[10, 20, 60, 80]]


def test_mining_takes_the_models_class_names_and_hands_the_stage_over(tmp_path, capsys):
    stage = tmp_path / "trained/best"
    stage.mkdir(parents=True)
    save_checkpoint(stage / "best.pt", DetectionModel("yolov5n", nc=2), ["cat", "dog"])
    for i in range(3):
        jpeg(tmp_path / f"pool/{i}.png")
    assert main([str(tmp_path / "task"), "--task", "mining+infer", "--images", str(tmp_path / "pool"),
                 "--model", str(stage)]) == 0
    config = yaml.safe_load((tmp_path / "task/in/config.yaml").read_text())
    assert config["class_names"] == ["cat", "dog"]
    assert config["model_params_path"] == ["/in/models/best/best.pt"]
    assert (tmp_path / "task/in/models/best/best.pt").read_bytes() == (stage / "best.pt").read_bytes()
    env = yaml.safe_load((tmp_path / "task/in/env.yaml").read_text())
    assert env["run_mining"] and env["run_infer"] and not env["run_training"]
    lines = (tmp_path / "task/in/candidate-index.tsv").read_text().splitlines()
    assert len(lines) == 3 and all(line.startswith("/in/assets/") and line.endswith(".png") for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--images", "{tmp}/none"], "is not a folder"),
    (["--images", "{tmp}/data"], "no class names"),
    (["--images", "{tmp}/data", "--task", "mining"], "need --model"),
    (["--images", "{tmp}/data", "--names", "a", "--set", "epochs"], "--set expects key=value"),
])
def test_what_cannot_become_a_task_is_refused_in_one_line(tmp_path, capsys, args, message):
    jpeg(tmp_path / "data/a.jpg")
    jpeg(tmp_path / "data/b.jpg")
    code = main([str(tmp_path / "task")] + [a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "task").exists()


def test_an_existing_folder_is_never_written_into(tmp_path, capsys):
    jpeg(tmp_path / "data/a.jpg")
    (tmp_path / "task").mkdir()
    (tmp_path / "task/keep.txt").write_text("mine")
    assert main([str(tmp_path / "task"), "--images", str(tmp_path / "data"), "--names", "a"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "task").iterdir()] == ["keep.txt"]


def test_the_demos_mining_task_hands_the_trained_stage_over(tmp_path):
    from ymir.local.demo import make_workdir

    stage = tmp_path / "trained/best"
    stage.mkdir(parents=True)
    save_checkpoint(stage / "best.pt", DetectionModel("yolov5n", nc=3), ["box", "disc", "triangle"])
    (stage / "best.onnx").write_bytes(b"onnx")
    work = make_workdir(tmp_path / "mine", "mining+infer", num_candidates=2, model_stage=stage)
    config = yaml.safe_load((work / "in/config.yaml").read_text())
    assert config["model_params_path"] == ["/in/models/best/best.onnx", "/in/models/best/best.pt"]
    assert (work / "in/models/best/best.pt").read_bytes() == (stage / "best.pt").read_bytes()
    assert not (work / "sources.tsv").exists()  # drawn images come from no file


def test_yolo_fractions_are_of_the_image_as_displayed(tmp_path, capsys):
    """A photo stored 200x100 with EXIF orientation 6 is 100 wide and 200 tall on screen, for the executor and
    for YOLOv5: its labels' fractions are of that size."""
    from PIL import Image

    from utils.data.images import EXIF_ORIENTATION_TAG

    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/labels").mkdir()
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = 6
    for name in ("a", "b"):
        Image.new("RGB", (200, 100), (10 if name == "a" else 200, 90, 150)).save(
            tmp_path / f"data/images/{name}.jpg", exif=exif.tobytes())
        (tmp_path / f"data/labels/{name}.txt").write_text("0 0.25 0.5 0.5 0.2\n0 nan 0.5 0.1 0.1\n")
    assert main([str(tmp_path / "task"), "--images", str(tmp_path / "data/images"), "--names", "cat"]) == 0
    assert "line 2: expected 'class cx cy w h'" in capsys.readouterr().err  # NaN: listed, left out
    samples = read_back(tmp_path / "task", "train", ["cat"]) + read_back(tmp_path / "task", "val", ["cat"])
    assert [s.boxes.tolist() for s in samples] == [[[0, 80, 50, 120]]] * 2  # exclusive corners when read
