"""The mining report's numbers: near-duplicates, per-prefix class histograms and empties, the score histogram."""
import json

import cv2
import numpy as np
import pytest
import torch

from ymir.local.demo import draw_image
from ymir.mining import report as mining_report
from ymir.mining.report import RankedImage, RankingRule, build_report, duplicate_groups, prefix_summary

NAMES = ("box", "disc", "triangle")


def decoded(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def batch(images):
    return torch.stack([torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))) for img in images])


def test_near_copies_are_grouped_and_different_scenes_are_not():
    rng = np.random.default_rng(0)
    scenes = [decoded(draw_image(rng, (128, 128)).jpeg) for _ in range(6)]
    recoded = decoded(cv2.imencode(".jpg", scenes[2], [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes())
    shifted = np.roll(scenes[4], 1, axis=1)
    uniform = np.full_like(scenes[0], 120)
    looks = mining_report.thumbnail_looks(batch(scenes + [recoded, shifted, uniform, uniform.copy()]))
    assert looks.shape == (10, 192)
    assert looks.dtype == np.float16 and not looks[8:].any()
    assert np.allclose(np.linalg.norm(looks[:8].astype(np.float32), axis=1), 1.0, atol=1e-2)
    groups = sorted(sorted(g) for g in duplicate_groups(looks.astype(np.float32)))
    assert groups == [[2, 6], [4, 7]]  # two uniform frames are not copies of each other: nothing to compare


def test_duplicate_groups_follow_chains():
    looks = np.array([[1.0, 0.0], [0.98, 0.199], [0.92, 0.392], [0.0, 1.0]])
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    assert [sorted(g) for g in duplicate_groups(looks)] == [[0, 1, 2]]  # 0~1 and 1~2, though 0 and 2 are apart


def boxes(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 6)


def test_a_prefix_counts_confident_boxes_only():
    images = [
        RankedImage("a.jpg", 0.9, True, boxes((0, 0, 5, 5, 0.9, 1), (1, 1, 6, 6, 0.3, 1), (0, 0, 2, 2, 0.1, 0))),
        RankedImage("b.jpg", 0.5, True, boxes((0, 0, 5, 5, 0.2, 2))),  # below 0.25: predicted empty
        RankedImage("c.jpg", 0.4, True, boxes((0, 0, 5, 5, 0.25, 2))),
        RankedImage("d.jpg", -1.0, False, boxes()),
    ]
    summary = prefix_summary(images, NAMES)
    assert summary == {"images": 4, "unreadable": 1, "predicted_empty_share": pytest.approx(1 / 3, abs=1e-4),
                       "boxes_per_image": 1.0, "boxes_per_class": {"box": 0, "disc": 2, "triangle": 1},
                       "images_per_class": {"box": 0, "disc": 1, "triangle": 1}}


def test_the_report_covers_the_prefixes_the_pool_holds(tmp_path):
    rng = np.random.default_rng(1)
    pictures = []
    for k in range(12):
        path = tmp_path / f"{k}.jpg"
        path.write_bytes(draw_image(rng, (64, 80)).jpeg)
        pictures.append(path)
    looks = mining_report.thumbnail_looks(batch([cv2.resize(decoded(p.read_bytes()), (64, 64)) for p in pictures]))
    images = [RankedImage(p, 1.0 - k / 12, True, boxes((2, 2, 30, 30, 0.8, k % 3)) if k % 2 else boxes(), looks[k])
              for k, p in enumerate(pictures)]
    report = build_report(images, NAMES, RankingRule("entropy"))
    assert list(report["prefixes"]) == ["first 10", "all"]
    assert report["prefixes"]["first 10"]["predicted_empty_share"] == 0.5
    assert report["prefixes"]["all"]["boxes_per_class"] == {"box": 2, "disc": 2, "triangle": 2}
    assert report["scores"]["count"] == 12 and sum(report["scores"]["counts"]) == 12
    assert report["scores"]["max"] == 1.0 and report["scores"]["min"] == pytest.approx(1 / 12)
    mining_report.write_report(tmp_path / "r.json", tmp_path / "r.png", images, NAMES,
                 RankingRule("entropy", "all 12 readable images scored 0", seed=3))
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["ranking"] == {"algorithm": "entropy", "order": "random draw from seed 3",
                                  "why": "all 12 readable images scored 0"}
    picture = cv2.imread(str(tmp_path / "r.png"))
    assert picture is not None and picture.shape[1] == 960


def test_a_report_that_cannot_be_written_costs_the_report_only(tmp_path, caplog):
    (tmp_path / "blocked").mkdir()  # a folder where the file should go
    mining_report.write_report(tmp_path / "blocked", tmp_path / "r.png", [RankedImage("x.jpg", 0.0, True)], NAMES,
                               RankingRule("random"))
    assert "the mining report could not be written (IsADirectoryError" in caplog.text
    mining_report.write_report(tmp_path / "r.json", tmp_path / "r.png", [RankedImage(None, 0.0, True)], NAMES,
                               RankingRule("random"))  # a picture that cannot be drawn: no file to read
    assert caplog.text.count("the mining report could not be written") == 2
