"""`diverse` mining: its orders, its class difficulty, and the box features it reads from the neck."""
import numpy as np
import pytest
import torch

from ymir.mining.diverse import (
    FEATURE,
    FEATURE_DIM,
    Evidence,
    box_features,
    class_quality,
    descriptor,
    diverse_order,
    image_uncertainty,
    place_scores,
    projection,
    recorded_class_ap,
)
from ymir.mining.labelled_looks import pack, sample_paths, unpack
from ymir.mining.ordering import farthest_point_order, interleaved_order


def test_interleaving_gives_the_side_list_its_share_of_every_top():
    main, side = np.arange(6), np.array([10, 11])
    assert interleaved_order(main, side, 0.25).tolist() == [0, 1, 2, 10, 3, 4, 5, 11]
    assert interleaved_order(main, side, 0.0).tolist() == [0, 1, 2, 3, 4, 5, 10, 11]
    assert interleaved_order(main, side, 1.0).tolist() == [10, 11, 0, 1, 2, 3, 4, 5]
    assert interleaved_order(main[:1], side, 0.1).tolist() == [0, 10, 11]  # main spent: the side list follows


def test_the_farthest_point_walk_puts_copies_last_and_spreads_the_rest():
    looks = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0.6, 0.8, 0]], dtype=np.float64)
    order = farthest_point_order(looks, np.ones(6)).tolist()
    assert order[0] == 0 and set(order[1:3]) == {2, 4}  # the two directions nothing placed covers yet
    assert order[-2:] == [1, 3]  # the copies of the first: nothing to add
    weighted = farthest_point_order(looks, np.array([0.2, 1, 0.1, 0.9, 0.5, 0.5])).tolist()
    assert weighted[0] == 1 and weighted[1] == 4  # heaviest first, then the heaviest far one
    assert farthest_point_order(np.zeros((0, 3)), np.zeros(0)).tolist() == []


def evidence(cls, score, uncertainty, feature):
    row = np.zeros(FEATURE + FEATURE_DIM, np.float32)
    row[:FEATURE] = cls, score, uncertainty
    row[FEATURE:] = feature
    return row


def unit(seed):
    v = np.random.default_rng(seed).normal(size=FEATURE_DIM)
    return v / np.linalg.norm(v)


def test_class_quality_comes_from_the_recorded_ap_or_else_from_the_pool():
    pool = [Evidence(np.stack([evidence(0, 0.9, 0.3, unit(1)), evidence(0, 0.8, 0.5, unit(2))])),
            Evidence(np.stack([evidence(0, 0.9, 0.3, unit(3)), evidence(1, 0.2, 0.7, unit(4))]))]
    quality = class_quality(pool, 3, None)
    # class 0: mean score 0.867, 3 of 4 boxes (share 2.25 x even, capped at 1); class 1: 0.2 x 0.75; class 2: none
    assert quality == pytest.approx([0.8667, 0.15, 0.0], abs=1e-3)
    assert class_quality(pool, 3, [0.5, None, 0.9]) == pytest.approx([0.5, 0.15, 0.9], abs=1e-3)
    weights = 1 + (1 - quality)
    rows = pool[1].rows
    assert image_uncertainty(rows, weights) == pytest.approx((0.7 * 1.85 + 0.3 * (2 - 0.8667)) / 2, abs=1e-3)


def test_copies_of_one_uncertain_scene_do_not_fill_the_top_and_empty_images_get_their_share():
    scene = unit(0)
    copies = [Evidence(evidence(0, 0.5, 0.95, scene)[None]) for _ in range(20)]  # the most uncertain
    varied = [Evidence(evidence(1, 0.6, 0.8, unit(10 + k))[None]) for k in range(10)]
    empty = [Evidence(np.zeros((0, FEATURE + FEATURE_DIM), np.float32), near_miss=0.01 * k) for k in range(10)]
    pool = copies + varied + empty
    order = diverse_order(pool, 2, None, 0.1)
    assert sorted(order.tolist()) == list(range(40))
    top = order[:10].tolist()
    assert sum(1 for i in top if i < 20) <= 2  # without the walk all ten would be copies
    assert top[9] == 39  # place 10 of 10: the strongest near miss among the empty images
    scores = place_scores(order)
    assert [scores[i] for i in order] == sorted(scores, reverse=True) and scores.min() > 0


def test_a_boxs_feature_is_read_at_the_cell_that_predicted_it():
    """Decoded rows run level by level, anchor by anchor, row by row: row 3 * 4 * 4 + 2 * 4 + 1 of level 1
    (after level 0's 3 x 8 x 8) is anchor 1, y 2, x 1 at level 1."""
    neck = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    rows = torch.tensor([3 * 8 * 8 + 1 * 16 + 2 * 4 + 1, 2 * 64 + 7 * 8 + 5])
    none, features = box_features(neck, [torch.zeros(0, dtype=torch.long), rows], anchors=3)
    expected = [neck[1][1, :, 2, 1] @ projection(16, 1), neck[0][1, :, 7, 5] @ projection(8, 0)]
    assert none.shape == (0, 32)
    for got, want in zip(features, expected):
        assert got == pytest.approx((want / want.norm()).numpy(), abs=1e-5)
    assert projection(16, 1).equal(projection(16, 1)) and not projection(16, 0).equal(projection(16, 1))


def test_an_images_features_do_not_depend_on_the_batch_it_is_in():
    """Gathered for the whole batch at once, yet each image's features are exactly those it gets alone (a shard of
    two processes batches other images together)."""
    g = torch.Generator().manual_seed(0)
    neck = [torch.randn(4, 64, 20, 20, generator=g), torch.randn(4, 128, 10, 10, generator=g),
            torch.randn(4, 256, 5, 5, generator=g)]
    total = 3 * (400 + 100 + 25)
    rows = [torch.randperm(total, generator=g)[:n] for n in (20, 0, 7, 13)]
    batched = box_features(neck, rows, anchors=3)
    for b in range(4):
        alone = box_features([maps[b:b + 1] for maps in neck], [rows[b]], anchors=3)[0]
        assert np.array_equal(batched[b], alone) and batched[b].shape == (len(rows[b]), 32)
        assert len(rows[b]) == 0 or np.allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("value", ["0.5", [0.5, 0.2], [0.5, "x", None], [True, 0.1, 0.2], [0.5, 1.5, 0.1], {"a": 1}])
def test_a_checkpoints_class_ap_is_used_only_when_it_is_one_number_or_none_per_class(value):
    assert recorded_class_ap(value, 3) is None
    assert recorded_class_ap([0.5, None, 1], 3) == [0.5, None, 1.0]
    assert recorded_class_ap([np.float32(0.25), None, np.float64(1)], 3) == [0.25, None, 1.0]


def test_tied_scores_cannot_rank_only_where_nothing_else_can_order_them():
    from ymir.mining.entropy import undetected_score
    from ymir.tasks.predict import cannot_rank_reason

    tied, none = np.array([0.3, 0.3, 0.3]), np.zeros(3, bool)
    assert "equally unsure" in cannot_rank_reason("entropy", tied, none)
    assert cannot_rank_reason("entropy", np.array([0.1, np.nan, 0.3]), none) is None  # not a tie
    seen = [Evidence(evidence(0, 1.0, 0.0, unit(k))[None]) for k in range(3)]  # boxes the walk can still order
    assert cannot_rank_reason("diverse", tied, none, seen) is None
    assert cannot_rank_reason("diverse", tied, np.ones(3, bool), [Evidence(np.zeros((0, FEATURE + FEATURE_DIM)))] * 3)
    assert undetected_score(float("nan")) == -0.5 and np.isfinite(undetected_score(float("inf")))


def test_exact_copies_never_take_two_places_while_a_distinct_candidate_remains():
    scene = unit(0)
    copies = [Evidence(evidence(0, 0.5, 0.9, scene)[None]) for _ in range(8)]  # the most uncertain, all alike
    distinct = [Evidence(evidence(0, 0.5, 0.85 - 0.01 * k, unit(20 + k))[None]) for k in range(8)]  # a little less
    order = diverse_order(copies + distinct, 1, None, 0.0).tolist()
    first_distinct_spent = max(order.index(8 + k) for k in range(8))
    assert sum(1 for i in order[:first_distinct_spent + 1] if i < 8) == 1  # one copy, then every distinct one
    assert order[0] < 8  # the most uncertain scene still comes first


def test_a_classs_images_rise_as_its_difficulty_rises():
    """Class 1's images are a little less uncertain than class 0's; the harder the model finds class 1 (the lower
    its recorded AP@0.5), the earlier they come."""
    pool = [Evidence(evidence(0, 0.5, 0.6, unit(k))[None]) for k in range(10)]
    pool += [Evidence(evidence(1, 0.5, 0.5, unit(100 + k))[None]) for k in range(10)]
    mean_places = []
    for ap in (0.9, 0.5, 0.2, 0.0):
        order = diverse_order(pool, 2, [0.5, ap], 0.0).tolist()
        mean_places.append(np.mean([order.index(i) for i in range(10, 20)]))
    assert mean_places == sorted(mean_places, reverse=True) and mean_places[-1] < mean_places[0] - 3
    assert mean_places[-1] < np.mean(range(20))  # at its hardest, class 1 leads the list


def test_a_near_copy_of_a_labelled_image_sinks_below_a_distinct_candidate():
    """The walk starts with the labelled images placed: a candidate that repeats one of them gains nothing, even
    when it is the most uncertain, while a new-looking candidate of similar uncertainty leads."""
    looks = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]], dtype=np.float64)
    weights = np.array([1.0, 0.9, 0.5])
    assert farthest_point_order(looks, weights).tolist()[0] == 0  # alone, the most uncertain leads
    labelled = np.array([[1, 0, 0], [0, 0, 1]], dtype=np.float64)
    assert farthest_point_order(looks, weights, labelled).tolist() == [1, 2, 0]
    # chunked comparison with the labelled set: the same as in one piece
    many = np.random.default_rng(0).normal(size=(50, 3))
    many /= np.linalg.norm(many, axis=1, keepdims=True)
    assert farthest_point_order(looks, weights, many, chunk=7).tolist() == \
        farthest_point_order(looks, weights, many).tolist()


def test_diverse_order_walks_away_from_the_labelled_images():
    pool = [Evidence(np.stack([evidence(0, 0.5, 0.9, unit(1))])),  # the most uncertain; a labelled image's twin
            Evidence(np.stack([evidence(0, 0.5, 0.8, unit(2))])),
            Evidence(np.stack([evidence(0, 0.5, 0.7, unit(3))]))]
    assert diverse_order(pool, 1, None, 0.0)[0] == 0
    labelled = descriptor(pool[0].rows, 1)[None, :]
    assert diverse_order(pool, 1, None, 0.0, labelled).tolist()[-1] == 0


def test_labelled_looks_round_trip_through_their_checkpoint_form():
    nc = 3
    looks = np.zeros((4, nc * FEATURE_DIM), np.float32)
    looks[0, :FEATURE_DIM] = unit(1)
    looks[1, FEATURE_DIM:2 * FEATURE_DIM] = 0.6 * unit(2)
    looks[1, 2 * FEATURE_DIM:] = 0.8 * unit(3)
    looks[3, 2 * FEATURE_DIM:] = unit(4)  # image 2 held no box: its row is zero and is dropped
    packed = pack(looks, nc, 64)
    assert all(isinstance(v, (int, float, torch.Tensor)) for v in packed.values())
    back = unpack(packed, nc, 64)
    assert back.shape == (3, nc * FEATURE_DIM)
    np.testing.assert_allclose(back, looks[[0, 1, 3]], atol=2e-3)  # float16 storage
    assert unpack(packed, nc, 128) is None  # made at another size than mining runs at
    assert unpack(packed, nc, 64, iou_thres=0.6) is None and unpack(packed, nc, 64, max_det=30) is None  # other NMS
    assert unpack(None, nc, 64) is None
    assert unpack(pack(np.zeros((2, nc * FEATURE_DIM), np.float32), nc, 64), nc, 64) is None  # no image described


@pytest.mark.parametrize("change", [
    {"version": 2}, {"dim": 16}, {"images": 10 ** 6}, {"img_size": True}, {"image": "text"},
    {"class": torch.zeros(1, dtype=torch.int16)}, {"image": torch.tensor([0, 9], dtype=torch.int32)},
    {"class": torch.tensor([0, 7], dtype=torch.int16)}, {"image": torch.tensor([0, 1])},
    {"vector": torch.full((2, FEATURE_DIM), float("inf"), dtype=torch.float16)},
    # what a crafted file can hold that the checkpoint reader lets through
    {"vector": torch.zeros((2, FEATURE_DIM), dtype=torch.float16).requires_grad_()},
    {"image": torch.tensor(0, dtype=torch.int32)}, {"version": torch.tensor([1, 1])}, {"dim": 32.0},
    {"iou_thres": 0}, {"max_det": 0}, {"img_size": 16},
])
def test_a_checkpoint_with_other_labelled_looks_is_mined_without_them(change, caplog):
    looks = np.zeros((2, 3 * FEATURE_DIM), np.float32)
    looks[0, :FEATURE_DIM], looks[1, FEATURE_DIM:2 * FEATURE_DIM] = unit(1), unit(2)
    bad = dict(pack(looks, 3, 64), **change)
    assert unpack(bad, 3, 64) is None
    assert "labelled_looks are not used" in caplog.text
    assert unpack(["not", "a", "record"], 3, 64) is None


def test_the_labelled_sample_is_seeded_and_bounded():
    paths = [f"img{i}.jpg" for i in range(30)]
    assert sample_paths(paths, limit=40) == paths
    picked = sample_paths(paths, limit=10)
    assert len(picked) == 10 and picked == sample_paths(paths, limit=10) and picked == sorted(picked, key=paths.index)
