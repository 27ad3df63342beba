"""Mining algorithms: hand-computed values, ALDD against a direct implementation of its formula, CALD cases."""
import math

import numpy as np
import pytest
import torch

from ymir.mining.aldd import aldd_scores, class_weights
from ymir.mining.cald import (
    BETA,
    Prediction,
    augmentation_consistency,
    cald_metric,
    cald_score,
    cutout,
    flip,
    image_rng,
    js_divergence,
    rotate,
    shrink,
)
from ymir.mining.uncertainty import binary_entropy_bits, entropy_score, random_scores


def test_random_is_seeded_and_uniform():
    a, b, c = random_scores(1000, 0), random_scores(1000, 0), random_scores(1000, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.05


def test_entropy_hand_computed():
    # one box: score 0.5 -> 1 bit; class distribution (0.9, 0.1) -> 0.4690 bits over log2(2) = 1
    class_bits = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert entropy_score(np.array([0.5]), np.array([[0.9, 0.1]])) == pytest.approx((1 + class_bits) / 2)
    # single class: score entropy only; mean of the three most uncertain of four boxes
    scores = np.array([0.5, 0.9, 0.99, 0.2])
    h = [1.0, binary_entropy_bits(0.9), binary_entropy_bits(0.99), binary_entropy_bits(0.2)]
    expected = np.mean(sorted(h, reverse=True)[:3])
    assert entropy_score(scores, np.ones((4, 1))) == pytest.approx(expected)
    assert entropy_score(np.zeros(0), np.zeros((0, 3))) == 0.0


# ---------- ALDD: a direct, slow implementation of the formula ----------

def bilinear_upsample(m, size):
    """Bilinear resize of a 2-D map, pixel centres aligned (align_corners=False), by its definition."""
    h, w = m.shape
    out = np.zeros((size, size))
    for i in range(size):
        sy = max((i + 0.5) * h / size - 0.5, 0.0)
        y0 = int(math.floor(sy))
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for j in range(size):
            sx = max((j + 0.5) * w / size - 0.5, 0.0)
            x0 = int(math.floor(sx))
            x1, lx = min(x0 + 1, w - 1), sx - x0
            out[i, j] = ((1 - ly) * ((1 - lx) * m[y0, x0] + lx * m[y0, x1])
                         + ly * ((1 - lx) * m[y1, x0] + lx * m[y1, x1]))
    return out


def window_mean(m):
    """9x9 mean around each pixel over the pixels that exist."""
    size = m.shape[0]
    out = np.zeros_like(m)
    for i in range(size):
        for j in range(size):
            out[i, j] = m[max(0, i - 4):i + 5, max(0, j - 4):j + 5].mean()
    return out


def binary_entropy(p):
    return -(p * np.maximum(np.log(p), -100) + (1 - p) * np.maximum(np.log(1 - p), -100))


def aldd_by_the_formula(levels, size, weights):
    sig = [1 / (1 + np.exp(-lv.numpy().astype(np.float64))) for lv in levels]
    nc = levels[0].shape[-1] - 5
    total = 0.0
    for c in range(nc):
        maps = [bilinear_upsample(s[0, a, :, :, 4] * s[0, a, :, :, 5 + c], size)
                for s in sig for a in range(s.shape[1])]
        mean_entropy = sum(window_mean(binary_entropy(p)) for p in maps)
        entropy_of_mean = sum(binary_entropy(window_mean(p)) for p in maps)
        u = entropy_of_mean - mean_entropy
        blocks = [u[i:i + 32, j:j + 32].max() for i in range(0, size, 32) for j in range(0, size, 32)]
        total += weights[c] * np.mean(blocks)
    return total


def test_aldd_vectorised_equals_the_formula():
    size, nc = 64, 3
    g = torch.Generator().manual_seed(0)
    levels = [torch.randn(2, 3, size // s, size // s, 5 + nc, generator=g) * 2 for s in (8, 16, 32)]
    weights = class_weights([1.0, 0.5], nc)  # padded with 1.0
    assert weights.tolist() == [1.0, 0.5, 1.0]
    ours = aldd_scores(levels, (size, size), weights)
    for b in range(2):
        expected = aldd_by_the_formula([lv[b:b + 1] for lv in levels], size, weights.tolist())
        assert ours[b].item() == pytest.approx(expected, abs=1e-5)
        assert expected > 0


def test_aldd_is_zero_where_neighbours_agree():
    levels = [torch.zeros(1, 3, 64 // s, 64 // s, 6) for s in (8, 16, 32)]  # a constant map everywhere
    assert aldd_scores(levels, (64, 64), class_weights([], 1)).item() == pytest.approx(0.0, abs=1e-6)


# ---------- CALD ----------

def pred(boxes, scores, probs):
    return Prediction(np.array(boxes, dtype=float), np.array(scores, dtype=float), np.array(probs, dtype=float))


def test_cald_consistency_is_one_minimum_per_augmentation():
    ref = pred([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.6], [[1.0, 0.0], [0.5, 0.5]])
    aug = pred([[0, 0, 10, 5], [20, 20, 40, 40]], [0.8, 0.6], [[1.0, 0.0], [0.5, 0.5]])
    # box 1: IoU 0.5, same distribution -> C_s = (0.9 + 0.8) / 2 = 0.85 -> |0.5 + 0.85 - 1.3| = 0.05
    # box 2: IoU 1, C_s = 0.6 -> |1.6 - 1.3| = 0.3
    assert augmentation_consistency(ref, aug) == pytest.approx(0.05)
    # the image metric averages one minimum per augmentation; more boxes do not add up
    empty = pred(np.zeros((0, 4)), [], np.zeros((0, 2)))
    assert cald_metric(ref, [(ref, aug), (ref, empty)]) == pytest.approx((0.05 + 0.0) / 2)
    crowd = pred([[0, 0, 10, 10]] * 5 + [[20, 20, 40, 40]], [0.9] * 5 + [0.6], [[1.0, 0.0]] * 5 + [[0.5, 0.5]])
    assert augmentation_consistency(crowd, aug) == pytest.approx(0.05)


def test_cald_class_divergence_and_cap():
    p, q = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert js_divergence(p, q)[0] == pytest.approx(math.log(2), abs=1e-6)
    ref = pred([[0, 0, 10, 10]], [0.9], [[1.0, 0.0]])
    flipped_class = pred([[0, 0, 10, 10]], [0.9], [[0.0, 1.0]])
    expected = abs(1 + 0.9 * (1 - math.log(2)) - BETA)
    assert augmentation_consistency(ref, flipped_class) == pytest.approx(expected, abs=1e-6)
    far = pred([[100, 100, 110, 110]], [0.0001], [[1.0, 0.0]])  # IoU 0: |0 + ~0.45 - 1.3| = 0.85
    assert augmentation_consistency(ref, far) == pytest.approx(abs(0.45005 - BETA), abs=1e-4)


def test_cald_ranks_the_least_consistent_first():
    nothing = pred(np.zeros((0, 4)), [], np.zeros((0, 2)))
    assert cald_score(cald_metric(nothing, [])) == 1.0  # no detection: first, as in the paper
    stable = pred([[0, 0, 10, 10]], [0.3], [[1.0, 0.0]])  # IoU 1 + 0.3 = 1.3 -> metric 0 -> score 1
    shaky = pred([[0, 0, 10, 10]], [0.9], [[1.0, 0.0]])  # 1 + 0.9 - 1.3 = 0.6 -> score 0.4
    assert cald_score(cald_metric(stable, [(stable, stable)])) == pytest.approx(1.0)
    assert cald_score(cald_metric(shaky, [(shaky, shaky)])) == pytest.approx(0.4)


def drawn(boxes, shape=(80, 120)):
    img = np.zeros((*shape, 3), dtype=np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[int(y1):int(y2), int(x1):int(x2)] = 255
    return img


def box_of_pixels(img):
    ys, xs = np.nonzero(img[..., 0] > 127)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@pytest.mark.parametrize("augment", [flip, shrink, rotate])
def test_cald_augmentations_move_boxes_with_pixels(augment):
    boxes = np.array([[30.0, 20.0, 60.0, 50.0]])
    img, out = augment(drawn(boxes), boxes, None)
    assert img.shape == (80, 120, 3)
    np.testing.assert_allclose(out[0], box_of_pixels(img), atol=2.0)


def test_cutout_is_seeded_and_spares_most_of_every_box():
    boxes = np.array([[40.0, 20.0, 70.0, 50.0]])
    a, _ = cutout(drawn(boxes), boxes, image_rng(3, "x.jpg"))
    b, _ = cutout(drawn(boxes), boxes, image_rng(3, "x.jpg"))
    c, _ = cutout(drawn(boxes), boxes, image_rng(4, "x.jpg"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    covered = 1 - (a[20:50, 40:70, 0] == 255).mean()
    assert 0.1 <= covered <= 0.8  # each of at most two patches hides 10-40 % of the box
    assert (a == 0).sum() > (drawn(boxes) == 0).sum()  # patches are black
