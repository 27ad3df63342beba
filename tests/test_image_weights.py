"""--image-weights: class and image weights against hand-computed values, the sampler, and a training run."""
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from tests.helpers import run_start
from utils.data.image_weights import ImageWeightedSampler, class_weights, epoch_class_weights, image_weights
from ymir.errors import ConfigError
from ymir.local.demo import make_workdir
from ymir.train_options import parse_args_options


def samples(*classes):
    return [SimpleNamespace(classes=np.array(c, dtype=np.int64)) for c in classes]


def test_class_and_image_weights_by_hand():
    data = samples([0, 0, 1], [0], [], [2, 0])  # class 0: 4 labels, class 1: 1, class 2: 1, class 3: none
    cw = class_weights(data, 4)
    # inverse counts 1/4, 1, 1, 1 (no label counts as one), normalised by 3.25
    np.testing.assert_allclose(cw, np.array([0.25, 1, 1, 1]) / 3.25)
    iw = image_weights(data, cw)
    np.testing.assert_allclose(iw, np.array([1.5, 0.25, 0.0, 1.25]) / 3.25)
    scaled = epoch_class_weights(cw, np.array([0.5, 0.0, 1.0, 0.2]))
    np.testing.assert_allclose(scaled, cw * np.array([0.25, 1.0, 0.0, 0.64]))
    assert epoch_class_weights(cw, None) is cw


def test_sampler_draws_by_weight_reproducibly_and_shards():
    sampler = ImageWeightedSampler(4, seed=3)
    sampler.set_weights(np.array([0.0, 1.0, 0.0, 3.0]))
    sampler.set_epoch(2)
    drawn = list(sampler)
    assert len(drawn) == 4 and set(drawn) <= {1, 3} and drawn == list(sampler)
    many = ImageWeightedSampler(4000, seed=0)
    many.set_weights(np.r_[np.zeros(2000), np.ones(1000), np.full(1000, 3.0)])
    counts = np.bincount(list(many), minlength=4000)
    assert counts[:2000].sum() == 0 and 2.6 < counts[3000:].sum() / counts[2000:3000].sum() < 3.4
    ranks = [ImageWeightedSampler(5, seed=1, rank=r, world=2) for r in (0, 1)]
    for r in ranks:
        r.set_weights(np.ones(5))
    assert len(list(ranks[0])) == len(ranks[0]) == 3 and len(list(ranks[1])) == 3
    nothing = ImageWeightedSampler(3)
    nothing.set_weights(np.zeros(3))  # a set without labels falls back to uniform
    assert len(list(nothing)) == 3


def test_image_weights_option():
    assert parse_args_options("--image-weights")["image_weights"]
    assert not parse_args_options("")["image_weights"]
    with pytest.raises(ConfigError, match="--rect"):
        parse_args_options("--image-weights --rect")


@pytest.mark.slow
def test_training_with_image_weights(tmp_path):
    work = make_workdir(tmp_path / "w", "training", num_train=10, num_val=4, image_size=(96, 128),
                        config={"epochs": 2, "img_size": 96, "batch_size_per_gpu": 4, "num_workers_per_gpu": 0,
                                "args_options": "--image-weights"})
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    stages = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())["model_stages"]
    assert stages["best"]["files"] == ["best.pt", "best.onnx"]
