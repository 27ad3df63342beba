"""Mining algorithms: hand-computed values, ALDD against a direct implementation of its formula, CALD cases."""
import math

import numpy as np
import pytest
import torch

from utils.data.letterboxed import ImageMeta
from utils.inference import detect
from ymir.config import MiningConfig
from ymir.mining import aldd
from ymir.mining.aldd import aldd_scores, aldd_scores_native, class_weights
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
    share_undetected,
    shrink,
)
from ymir.mining.entropy import binary_entropy_bits, entropy_score
from ymir.mining.random_draw import random_scores
from ymir.mining.scorers import CaldScorer, best_raw_score


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
    # no box kept: below every image with one, by the most confident raw prediction (floor 0.05)
    assert entropy_score(np.zeros(0), np.zeros((0, 3)), 0.03) == pytest.approx((0.03 / 0.05 - 1) / 2)  # -0.2
    assert entropy_score(np.zeros(0), np.zeros((0, 3)), 0.0) == -0.5
    assert entropy_score(np.zeros(0), np.zeros((0, 3))) == -0.5
    assert entropy_score(np.array([0.9999]), np.ones((1, 1))) > entropy_score(np.zeros(0), np.zeros((0, 1)), 0.0499)


def test_best_raw_score_is_objectness_times_best_class():
    decoded = torch.tensor([[10.0, 10, 4, 4, 0.5, 0.02, 0.06], [20, 20, 4, 4, 0.9, 0.03, 0.01]])
    assert best_raw_score(decoded) == pytest.approx(0.03)  # 0.5 x 0.06 beats 0.9 x 0.03


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


def window_mean(m, window=9):
    """window x window mean around each pixel over the pixels that exist."""
    half = window // 2
    out = np.zeros_like(m)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            out[i, j] = m[max(0, i - half):i + half + 1, max(0, j - half):j + half + 1].mean()
    return out


def binary_entropy(p):
    return -(p * np.maximum(np.log(p), -100) + (1 - p) * np.maximum(np.log(1 - p), -100))


def aldd_at_input_resolution_by_the_formula(levels, size, weights):
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


def aldd_native_by_the_formula(levels, size, weights, power=2):
    """3x3-cell mutual information on each level's grid, weighted by (8 / stride)^power, each cell's value spread
    over the stride-8 cells it covers, summed over maps, max over 32x32-pixel regions (4x4 stride-8 cells), mean
    over regions."""
    sig = [1 / (1 + np.exp(-lv.numpy().astype(np.float64))) for lv in levels]
    nc, fine = levels[0].shape[-1] - 5, size // 8
    total = 0.0
    for c in range(nc):
        u = np.zeros((fine, fine))
        for s in sig:
            factor = fine // s.shape[2]
            for a in range(s.shape[1]):
                p = s[0, a, :, :, 4] * s[0, a, :, :, 5 + c]
                mi = (binary_entropy(window_mean(p, 3)) - window_mean(binary_entropy(p), 3)) / factor ** power
                for i in range(fine):
                    for j in range(fine):
                        u[i, j] += mi[i // factor, j // factor]
        blocks = [u[i:i + 4, j:j + 4].max() for i in range(0, fine, 4) for j in range(0, fine, 4)]
        total += weights[c] * np.mean(blocks)
    return total


def random_levels(batch, size, nc, seed=0, strides=(8, 16, 32)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size // s, size // s, 5 + nc, generator=g) * 2 for s in strides]


@pytest.mark.parametrize("resolution, formula", [("native", aldd_native_by_the_formula),
                                                 ("input", aldd_at_input_resolution_by_the_formula)])
def test_aldd_vectorised_equals_the_formula(resolution, formula):
    size, nc = 64, 3
    levels = random_levels(2, size, nc)
    weights = class_weights([1.0, 0.5], nc)  # padded with 1.0
    assert weights.tolist() == [1.0, 0.5, 1.0]
    ours = aldd_scores(levels, (size, size), weights, resolution)
    for b in range(2):
        expected = formula([lv[b:b + 1] for lv in levels], size, weights.tolist())
        assert ours[b].item() == pytest.approx(expected, abs=1e-5)
        assert expected > 0


def test_aldd_native_level_power():
    size, nc = 64, 2
    levels = random_levels(1, size, nc, seed=3)
    weights = class_weights([], nc)
    for power in (0, 1):
        ours = aldd_scores_native(levels, (size, size), weights, power)
        assert ours.item() == pytest.approx(aldd_native_by_the_formula(levels, size, weights.tolist(), power), abs=1e-5)
    # the coarse levels' weight falls with the power, so the score does
    equal = aldd_scores_native(levels, (size, size), weights, 0).item()
    assert equal > aldd_scores(levels, (size, size), weights).item() > 0


def test_aldd_native_in_chunks_equals_the_whole_batch(monkeypatch):
    size, nc = 64, 3
    levels = random_levels(5, size, nc, seed=4)
    weights = class_weights([], nc)
    whole = aldd_scores_native(levels, (size, size), weights)
    per_image = sum(level[0, ..., 5:].numel() for level in levels)
    monkeypatch.setattr(aldd, "NATIVE_CHUNK_ELEMENTS", 2 * per_image)  # chunks of 2, 2 and 1 images
    chunked = aldd_scores_native(levels, (size, size), weights)
    assert chunked.shape == (5,)
    assert torch.allclose(chunked, whole, rtol=1e-6, atol=1e-6)


def test_aldd_native_handles_a_stride_64_level_and_non_square_inputs():
    g = torch.Generator().manual_seed(1)
    height, width = 128, 64
    levels = [torch.randn(1, 3, height // s, width // s, 7, generator=g) for s in (8, 16, 32, 64)]
    score = aldd_scores(levels, (height, width), class_weights([], 2))
    # the stride-64 level (2 x 1 cells) adds to every region its cells cover: the score grows without it dropping
    without = aldd_scores(levels[:3], (height, width), class_weights([], 2))
    assert torch.isfinite(score).all() and score.item() >= without.item() > 0


@pytest.mark.parametrize("resolution", ["native", "input"])
def test_aldd_is_zero_where_neighbours_agree(resolution):
    levels = [torch.zeros(1, 3, 64 // s, 64 // s, 6) for s in (8, 16, 32)]  # a constant map everywhere
    assert aldd_scores(levels, (64, 64), class_weights([], 1), resolution).item() == pytest.approx(0.0, abs=1e-5)


def test_aldd_rejects_an_unknown_resolution():
    with pytest.raises(ValueError, match="'pixel'"):
        aldd_scores(random_levels(1, 64, 1), (64, 64), class_weights([], 1), "pixel")


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


def test_cald_orders_images_without_detections_by_their_strongest_missed_candidate():
    # three images, no candidate reaches conf_thres 0.25: strongest obj x cls 0.2 x 0.9, 0.5 x 0.1, 0.1 x 0.3
    decoded = torch.zeros(3, 4, 5 + 2)
    decoded[0, 1, 4], decoded[0, 1, 5:] = 0.2, torch.tensor([0.9, 0.1])
    decoded[1, 2, 4], decoded[1, 2, 5:] = 0.5, torch.tensor([0.1, 0.05])
    decoded[2, 0, 4], decoded[2, 0, 5:] = 0.1, torch.tensor([0.3, 0.2])
    metas = [ImageMeta(i, (64, 64), (1.0, 1.0), (0.0, 0.0)) for i in range(3)]
    out = detect(lambda images: (decoded, []), torch.zeros(3, 3, 64, 64, dtype=torch.uint8), metas, 0.25, 0.45, 300)
    assert [len(d) for d in out.detections] == [0, 0, 0]
    scorer = CaldScorer(detector=None, config=MiningConfig(mining_algorithm="cald"), label_histogram=None)
    scores = scorer.score_batch(torch.zeros(3, 3, 64, 64, dtype=torch.uint8), out, metas, ["a", "b", "c"])
    assert scores == pytest.approx([1.18, 1.05, 1.03])
    # with detections, the score stays 1 - metric <= 1: every image without detections ranks above
    assert cald_score(0.0, undetected_evidence=0.0) == 1.0


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


def test_cald_share_interleaves_images_without_detections():
    detected = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    missed = [1.2, 1.05, 1.1]  # 1 + strongest near miss: the paper's order puts them first
    scores = np.array(detected + missed)
    undetected = np.array([False] * 6 + [True] * 3)
    assert np.array_equal(share_undetected(scores, undetected, 1.0), scores)
    # share 1/3: places 3, 6 and 9, strongest near miss first, each scored between its neighbours
    third = share_undetected(scores, undetected, 1 / 3)
    assert third[:6].tolist() == detected
    assert third[6:] == pytest.approx([0.75, 0.2, 0.55])
    # share 0: after every image with detections, spread down to 0, still in near-miss order
    assert share_undetected(scores, undetected, 0.0)[6:] == pytest.approx([0.3, 0.1, 0.2])
    # share 0.5 with more misses than places: they take every other place, then the rest of the tail
    half = share_undetected(np.array([0.8, 0.6, 1.3, 1.2, 1.1, 1.0]), np.array([False, False] + [True] * 4), 0.5)
    ranking = np.argsort(-half, kind="stable").tolist()
    assert ranking == [0, 2, 1, 3, 4, 5] and half.min() > 0
    # nothing to interleave
    assert np.array_equal(share_undetected(scores, np.zeros(9, bool), 0.2), scores)
    assert np.array_equal(share_undetected(scores, np.ones(9, bool), 0.2), scores)


def test_mining_result_applies_the_cald_share_to_readable_images_only(tmp_path):
    from types import SimpleNamespace

    from ymir.paths import OutputPaths
    from ymir.results import Detection
    from ymir.tasks.predict import ImageResult, _write_results

    box = [Detection(0.0, 0.0, 4.0, 4.0, 0.5, 0)]
    results = [ImageResult(0, 0.7, box, (8, 8)), ImageResult(1, 1.2, [], (8, 8)),
               ImageResult(2, 0.4, box, (8, 8)), ImageResult(3, -1.0, [], (0, 0), "truncated")]
    candidates = [(f"/in/{i}.jpg", tmp_path / f"{i}.jpg") for i in range(4)]
    ctx = SimpleNamespace(env=SimpleNamespace(output=OutputPaths.under(tmp_path)),
                          config=SimpleNamespace(mining=MiningConfig(mining_algorithm="cald",
                                                                     cald_undetected_share=0.0), infer=None))
    _write_results(ctx, candidates, results, ["a"], SimpleNamespace(nc=1, meta={}), 64)
    lines = [line.split("\t") for line in (tmp_path / "result.tsv").read_text().splitlines()]
    assert [p for p, _ in lines] == ["/in/0.jpg", "/in/2.jpg", "/in/1.jpg", "/in/3.jpg"]
    assert [float(s) for _, s in lines] == pytest.approx([0.7, 0.4, 0.2, -1.0])


def test_one_registry_names_the_algorithms_for_the_config_the_task_and_the_templates():
    from ymir.config import MINING_ALGORITHMS, load_template
    from ymir.mining.registry import ALGORITHMS, ScorerInputs, make_scorer

    assert tuple(ALGORITHMS) == MINING_ALGORITHMS and load_template("mining")["mining_algorithm"] in ALGORITHMS
    model_free = [name for name, algorithm in ALGORITHMS.items() if not algorithm.needs_model]
    assert model_free == ["random"]
    config = MiningConfig(mining_algorithm="random", seed=3).validate()
    scorer = make_scorer(ScorerInputs(config, 5, None, 0, None))
    assert len(scorer.scores) == 5  # a model-free scorer holds the whole pool's scores when made
