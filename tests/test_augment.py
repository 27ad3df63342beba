"""Augmentations keep boxes on the pixels they describe (images with drawn boxes)."""
import numpy as np
import pytest
import torch

from utils.data.augment import flip_horizontal, flip_vertical, mosaic, random_perspective
from utils.data.sample import Sample
from utils.data.train_data import TrainImages, ValImages, normalised_xywh, to_chw_rgb
from utils.hyperparameters import SCRATCH_LOW

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def drawn(shape, boxes):
    """Black image, one solid colour per box; labels (n, 5) class, xyxy."""
    img = np.zeros((*shape, 3), dtype=np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        img[y1:y2, x1:x2] = COLOURS[k]
    labels = np.array([[k, *b] for k, b in enumerate(boxes)], dtype=np.float64)
    return img, labels


def pixel_box(img, colour):
    mask = np.all(np.abs(img.astype(int) - colour) < 60, axis=2)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float) if len(xs) else None


def assert_boxes_on_pixels(img, labels, tolerance):
    assert len(labels) > 0
    for row in labels:
        found = pixel_box(img, COLOURS[int(row[0]) % len(COLOURS)])
        assert found is not None
        np.testing.assert_allclose(row[1:5], found, atol=tolerance)


def test_flips():
    img, labels = drawn((60, 100), [(10, 5, 30, 25), (50, 30, 90, 55)])
    assert_boxes_on_pixels(*flip_horizontal(img, labels), tolerance=0)
    assert_boxes_on_pixels(*flip_vertical(img, labels), tolerance=0)


@pytest.mark.parametrize("seed", range(4))
def test_random_perspective_moves_boxes_with_pixels(seed):
    img, labels = drawn((128, 160), [(20, 20, 60, 50), (90, 70, 140, 120)])
    out, moved = random_perspective(img, labels, np.random.default_rng(seed), degrees=0, translate=0.1, scale=0.5,
                                    shear=0)
    assert out.shape == img.shape
    inside = [r for r in moved if (r[3] - r[1]) > 4]
    assert_boxes_on_pixels(out, np.array(inside), tolerance=2.5)


def test_rotation_gives_the_hull_of_the_rotated_box():
    img, labels = drawn((128, 128), [(44, 44, 84, 84)])
    out, moved = random_perspective(img, labels, np.random.default_rng(0), degrees=30, translate=0, scale=0, shear=0)
    found = pixel_box(out, COLOURS[0])
    assert moved[0, 1] <= found[0] + 1 and moved[0, 3] >= found[2] - 1  # the hull contains the pixels


@pytest.mark.parametrize("seed", range(3))
def test_mosaic_places_all_four_images(seed):
    pieces = []
    for k in range(4):  # each image has one box in its own colour (= class)
        img, labels = drawn((64, 80), [(10 + 5 * k, 10, 40 + 5 * k, 40)])
        img[img.any(2)] = COLOURS[k]
        labels[:, 0] = k
        pieces.append((img, labels))
    canvas, labels = mosaic(lambda i: (pieces[i][0].copy(), pieces[i][1].copy()), [0, 1, 2, 3], 80,
                            np.random.default_rng(seed))
    assert canvas.shape == (160, 160, 3)
    visible = [r for r in labels if (r[3] - r[1]) > 1 and (r[4] - r[2]) > 1]
    assert_boxes_on_pixels(canvas, np.array(visible), tolerance=0)


def write_sample(tmp_path, name, shape, boxes):
    import cv2

    img, labels = drawn(shape, boxes)
    path = tmp_path / f"{name}.png"
    cv2.imwrite(str(path), img)
    return Sample(path, shape[1], shape[0], 1, labels[:, 1:].astype(np.float32), labels[:, 0].astype(np.int64))


def test_training_items_keep_boxes_on_pixels(tmp_path):
    samples = [write_sample(tmp_path, f"s{i}", (90 + 10 * i, 120), [(10, 10, 50, 40), (60, 50, 110, 85)])
               for i in range(4)]
    hyp = dict(SCRATCH_LOW, hsv_h=0, hsv_s=0, hsv_v=0)  # colours must stay recognisable
    for augment in (True, False):
        dataset = TrainImages(samples, 128, hyp, augment=augment, seed=1)
        for index in range(4):
            image, labels = dataset[index]
            img = image.numpy().transpose(1, 2, 0)[..., ::-1]
            h, w = img.shape[:2]
            rows = []
            for _, cls, cx, cy, bw, bh in labels.numpy():
                if bw * w > 4 and bh * h > 4:
                    rows.append([cls, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
            if not augment:
                assert len(rows) == 2
            if rows and augment:
                # in a mosaic several images share colours: each box must cover pixels of its colour
                for r in rows:
                    crop = img[int(r[2]) + 1:int(r[4]) - 1, int(r[1]) + 1:int(r[3]) - 1]
                    assert np.all(np.abs(crop.astype(int) - COLOURS[int(r[0])]) < 60, axis=2).mean() > 0.8
            elif rows:
                assert_boxes_on_pixels(img, np.array(rows), tolerance=1.5)


def test_validation_items_keep_labels_in_original_pixels(tmp_path):
    samples = [write_sample(tmp_path, "v0", (100, 200), [(10, 10, 50, 40)])]
    image, labels, meta = ValImages(samples, 64, batch_size=1, stride=32)[0]
    assert tuple(image.shape) == (3, 64, 96) and meta.shape == (100, 200)  # YOLOv5 pads rect shapes by half a stride
    np.testing.assert_allclose(labels.numpy(), [[0, 10, 10, 50, 40]])
    img = image.numpy().transpose(1, 2, 0)[..., ::-1]
    box = pixel_box(img, COLOURS[0])
    back = (box - [meta.pad[0], meta.pad[1]] * 2) / meta.ratio[0]
    np.testing.assert_allclose(back, [10, 10, 50, 40], atol=3.5)


def test_normalised_labels():
    out = normalised_xywh(np.array([[2, 10, 20, 30, 60]]), 100, 200)
    np.testing.assert_allclose(out, [[0, 2, 0.2, 0.2, 0.2, 0.2]])


def numpy_flip_horizontal(img, labels):
    out = labels.copy()
    out[:, 1], out[:, 3] = img.shape[1] - labels[:, 3], img.shape[1] - labels[:, 1]
    return np.ascontiguousarray(img[:, ::-1]), out


def numpy_flip_vertical(img, labels):
    out = labels.copy()
    out[:, 2], out[:, 4] = img.shape[0] - labels[:, 4], img.shape[0] - labels[:, 2]
    return np.ascontiguousarray(img[::-1]), out


def numpy_chw_rgb(img):
    return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (480, 640), (641, 333)])
def test_the_fast_flips_and_layout_are_the_plain_numpy_forms(shape):
    img = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    labels = np.array([[1, 0.5, 0.25, 3.0, 4.0]])
    for fast, plain in ((flip_horizontal, numpy_flip_horizontal), (flip_vertical, numpy_flip_vertical)):
        (a, la), (b, lb) = fast(img, labels), plain(img, labels)
        assert np.array_equal(a, b) and a.flags.c_contiguous and np.array_equal(la, lb)
    chw = to_chw_rgb(img)
    assert torch.equal(chw, numpy_chw_rgb(img)) and chw.is_contiguous()
    assert torch.equal(to_chw_rgb(img[::2]), numpy_chw_rgb(img[::2]))  # a strided view too


def test_a_fixed_batch_is_what_the_plain_numpy_pipeline_gives(tmp_path, monkeypatch):
    """Eight training items over two epochs (mosaic, perspective, HSV, both flips at probability 0.5) through the
    loader's fast forms and through the plain numpy forms they replaced: equal, pixel for pixel."""
    import utils.data.train_data as train_data

    samples = [write_sample(tmp_path, f"s{i}", (90 + 10 * i, 120), [(10, 10, 50, 40), (60, 50, 110, 85)])
               for i in range(4)]
    hyp = dict(SCRATCH_LOW, flipud=0.5)

    def items():
        dataset = TrainImages(samples, 128, hyp, seed=3)
        return [dataset[(epoch, index)] for epoch in (0, 1) for index in range(4)]

    fast = items()
    monkeypatch.setattr(train_data, "flip_horizontal", numpy_flip_horizontal)
    monkeypatch.setattr(train_data, "flip_vertical", numpy_flip_vertical)
    monkeypatch.setattr(train_data, "to_chw_rgb", numpy_chw_rgb)
    plain = items()
    for (img_a, lab_a), (img_b, lab_b) in zip(fast, plain):
        assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)
