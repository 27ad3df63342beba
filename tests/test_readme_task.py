"""The README's "Write a task by hand": the files it shows, written out exactly as shown, run as tasks.

The folders are parsed out of README.md (each file's block follows a line naming it, `task/in/...`), so the
section and this test cannot drift apart. The only changes made here: the images (drawn with the README's boxes)
and `epochs`, cut to 2 so that the test stays short.
"""
import json
import re
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np
import pytest
import yaml

from tests.helpers import run_start
from ymir.annotations import parse_ark, parse_voc

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Write a task by hand"
FILE_LINE = re.compile(r"^`(task2?/[^`]+)`:")


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end > 0 else None]


def shown_files(section: str) -> Dict[str, str]:
    """{path: content} for every fenced block right after a paragraph that starts by naming a task file."""
    files, named, lines, i = {}, None, section.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = lines.index("```", i + 1)
            if named:
                files[named] = "".join(f"{body}\n" for body in lines[i + 1:end])
            named, i = None, end + 1
            continue
        if line.strip() and (i == 0 or not lines[i - 1].strip()):  # a paragraph's first line
            match = FILE_LINE.match(line)
            named = match.group(1) if match else None
        i += 1
    return files


def draw(size: Tuple[int, int], boxes: List[tuple], seed: int) -> bytes:
    """A noisy 320x240 image with a filled shape inside each (class, x1, y1, x2, y2) box."""
    rng = np.random.default_rng(seed)
    width, height = size
    img = rng.integers(90, 140, (height, width, 3), dtype=np.uint8)
    for cls, x1, y1, x2, y2 in boxes:
        if cls == 0:
            cv2.rectangle(img, (int(x1), int(y1)), (int(x2) - 1, int(y2) - 1), (20, 20, 200), -1)
        else:
            cv2.ellipse(img, (((x1 + x2) / 2, (y1 + y2) / 2), (x2 - x1, y2 - y1), 0), (200, 40, 20), -1)
    return cv2.imencode(".jpg", img)[1].tobytes()


def write_task(root: Path, files: Dict[str, str], prefix: str) -> Path:
    for name, content in files.items():
        if name.startswith(prefix + "/"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(content)
    (root / prefix / "out").mkdir()
    return root / prefix


def images_listed(task: Path) -> List[Tuple[Path, Path]]:
    pairs = []
    for index in sorted((task / "in").glob("*-index.tsv")):
        for line in index.read_text().splitlines():
            image, *annotation = line.split("\t")
            assert image.startswith("/in/"), line
            pairs.append((task / "in" / image[4:], task / "in" / annotation[0][4:] if annotation else None))
    return pairs


def test_the_readme_shows_every_file_of_both_tasks():
    files = shown_files(readme_section())
    assert {"task/in/env.yaml", "task/in/config.yaml", "task/in/train-index.tsv", "task/in/val-index.tsv",
            "task2/in/env.yaml", "task2/in/config.yaml", "task2/in/candidate-index.tsv"} <= set(files)
    for name, content in files.items():
        if name.endswith(".tsv") and "candidate" not in name:
            assert all(len(line.split("\t")) == 2 for line in content.splitlines()), f"{name}: TAB-separated"
        if name.endswith(".yaml"):
            assert isinstance(yaml.safe_load(content), dict), name
    annotations = {n for n in files if n.startswith("task/in/annotations/")}
    listed = {line.split("\t")[1] for n in ("task/in/train-index.tsv", "task/in/val-index.tsv")
              for line in files[n].splitlines()}
    assert {"task/in/" + a[len("/in/"):] for a in listed} == annotations


def test_the_readme_annotation_examples_parse_without_a_problem(tmp_path):
    section = readme_section()
    for name, content in shown_files(section).items():
        if name.startswith("task/in/annotations/"):
            (tmp_path / "a.txt").write_text(content)
            boxes, problems = parse_ark(tmp_path / "a.txt", 2)
            assert boxes and not problems, (name, problems)
    xml = "".join(re.findall(r"`(<annotation>.*?)`\n?`(</bndbox>.*?)`", section, flags=re.S)[0])
    (tmp_path / "a.xml").write_text(xml)
    assert parse_voc(tmp_path / "a.xml", ["cat", "dog"]) == ([(0, 40.0, 30.0, 140.0, 150.0)], [])


@pytest.mark.slow
def test_a_task_written_from_the_readme_trains_then_mines_and_infers(tmp_path):
    files = shown_files(readme_section())
    train = write_task(tmp_path, files, "task")
    config = yaml.safe_load((train / "in/config.yaml").read_text())
    (train / "in/config.yaml").write_text(yaml.safe_dump(dict(config, epochs=2)))
    for seed, (image, annotation) in enumerate(images_listed(train)):
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(draw((320, 240), parse_ark(annotation, 2)[0], seed))

    trained = run_start(train)
    assert trained.returncode == 0, trained.stdout[-3000:]
    result = yaml.safe_load((train / "out/models/result.yaml").read_text())
    assert result["best_stage_name"] == "best"
    assert sorted(result["model_stages"]["best"]["files"]) == ["best.onnx", "best.pt"]

    mine = write_task(tmp_path, files, "task2")
    shutil.copytree(train / "out/models/best", mine / "in/models/best")
    candidates = images_listed(mine)
    for seed, (image, _) in enumerate(candidates):
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(draw((320, 240), [(seed % 2, 60, 50, 200, 180)], 100 + seed))
    mined = run_start(mine)
    assert mined.returncode == 0, mined.stdout[-3000:]
    ranked = (mine / "out/result.tsv").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in ranked) == ["/in/images/new-1.jpg", "/in/images/new-2.jpg"]
    predictions = json.loads((mine / "out/infer-result.json").read_text())["detection"]
    assert set(predictions) == {"new-1.jpg", "new-2.jpg"}
    assert all(set(value) == {"boxes"} for value in predictions.values())  # protocol 1.1.0's form
