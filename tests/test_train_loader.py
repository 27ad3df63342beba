"""The training loader: workers that live for the whole run still augment each epoch anew, the order is seeded by
(seed, epoch) alone, and the image cache is filled once, read instead of the files, and refused when it would not
fit."""
import logging

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import utils.data.image_cache as image_cache
from tests.test_augment import write_sample
from utils.data.loader_workers import init_loader_worker
from utils.data.train_data import EpochIndices, EpochShuffle, TrainImages, collate_train
from utils.hyperparameters import SCRATCH_LOW

BOXES = [(10, 10, 50, 40), (60, 50, 110, 85)]


@pytest.fixture
def samples(tmp_path):
    return [write_sample(tmp_path, f"s{i}", (90 + 10 * i, 120 + 4 * i), BOXES) for i in range(6)]


def batches(dataset, sampler, workers, epochs):
    """Every batch of `epochs` epochs through one loader (its workers, if any, kept for the whole run)."""
    loader = DataLoader(dataset, batch_size=4, sampler=EpochIndices(sampler, dataset), num_workers=workers,
                        collate_fn=collate_train, persistent_workers=workers > 0, worker_init_fn=init_loader_worker)
    out = []
    for epoch in range(epochs):
        dataset.epoch = epoch
        sampler.set_epoch(epoch)
        out.append([(images.clone(), labels.clone()) for images, labels in loader])
    return out


def test_workers_kept_for_the_whole_run_give_each_epoch_its_own_augmentation(samples):
    """The same batches in the main process (OpenCV with a pool of 4 threads) and in workers (OpenCV on one)."""
    dataset = TrainImages(samples, 256, dict(SCRATCH_LOW), seed=3)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(4)
    try:
        in_process = batches(dataset, EpochShuffle(len(dataset), seed=3), 0, 2)
    finally:
        cv2.setNumThreads(threads)
    kept = batches(dataset, EpochShuffle(len(dataset), seed=3), 2, 2)
    for a, b in zip(in_process, kept):  # the same batches, epoch by epoch, whatever the workers
        assert len(a) == len(b) == 2
        for (ia, la), (ib, lb) in zip(a, b):
            assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not torch.equal(kept[0][0][0], kept[1][0][0])  # a worker's copy of `epoch` would repeat epoch 0


def test_an_index_with_its_epoch_is_the_index_at_that_epoch(samples):
    dataset = TrainImages(samples, 96, dict(SCRATCH_LOW), seed=1)
    dataset.epoch = 4
    image, labels = dataset[2]
    dataset.epoch = 0
    tagged_image, tagged_labels = dataset[(4, 2)]
    assert torch.equal(image, tagged_image) and torch.equal(labels, tagged_labels)


def test_the_order_is_seeded_by_seed_and_epoch_only():
    first, again, other = EpochShuffle(50, seed=7), EpochShuffle(50, seed=7), EpochShuffle(50, seed=8)
    orders = []
    for epoch in (0, 1):
        for sampler in (first, again, other):
            sampler.set_epoch(epoch)
        orders.append(list(first))
        assert sorted(list(first)) == list(range(50)) and list(first) == list(again) != list(other)
    assert orders[0] != orders[1]


@pytest.mark.parametrize("kind", ["ram", "disk"])
def test_a_filled_cache_is_read_instead_of_the_files(samples, tmp_path, kind):
    plain = TrainImages(samples, 96, dict(SCRATCH_LOW), seed=2)
    expected = [plain[i] for i in range(len(samples))]
    cached = TrainImages(samples, 96, dict(SCRATCH_LOW), seed=2)
    cached.images.use_cache(kind)
    cache = cached.images.cache
    for s in samples:
        s.image.unlink()  # from now on only the cache has the images
    got = [cached[i] for i in range(len(samples))]
    for (ei, el), (gi, gl) in zip(expected, got):
        assert torch.equal(ei, gi) and torch.equal(el, gl)
    if kind == "disk":
        folder = cache.folder
        assert folder is not None and not str(folder).startswith(str(tmp_path))  # never beside the images (/in)
        assert len(list(folder.glob("*.npy"))) == len(samples)
        cache.close()
        assert not folder.exists()


def test_a_cache_that_would_not_fit_says_so_and_training_goes_on_without_it(samples, monkeypatch, caplog):
    needed = image_cache.resized_bytes(samples, 96)
    dataset = TrainImages(samples, 96, dict(SCRATCH_LOW), seed=2)
    assert needed == sum(dataset.images.read_resized(i).nbytes for i in range(len(samples)))  # known before reading
    monkeypatch.setattr(image_cache, "available_memory", lambda: int(needed * 1.05))  # under the 10 % margin
    with caplog.at_level(logging.WARNING):
        dataset.images.use_cache("ram")
    assert dataset.images.cache is None and "training without their cache" in caplog.text
    assert len(dataset[0]) == 2
    monkeypatch.setattr(image_cache, "available_memory", lambda: int(needed * 1.2))
    dataset.images.use_cache("ram")
    assert dataset.images.cache is not None and len(dataset.images.cache.arrays) == len(samples)


def test_images_that_cannot_be_read_stay_out_of_the_cache(samples):
    samples[1].image.write_bytes(b"not an image")
    dataset = TrainImages(samples, 96, dict(SCRATCH_LOW), seed=2)
    dataset.images.use_cache("ram")
    assert sorted(dataset.images.cache.arrays) == [0, 2, 3, 4, 5]
    assert np.array_equal(dataset.images.load(1)[0], dataset.images.cache.arrays[2])  # the next one stands in


@pytest.mark.parametrize("cache", [None, "ram"])
def test_validation_keeps_its_workers_and_with_cache_reads_no_file_after_the_first_epoch(tmp_path, monkeypatch,
                                                                                          cache):
    """The validation loader's workers live for the whole run; under `--cache` the validation images are cached
    too: once the files are gone, validation still sees the first epoch's images (without the cache, blanks)."""
    import utils.trainer
    from models.architecture import architecture
    from models.yolo import DetectionModel
    from utils.train_settings import TrainSettings

    train_samples = [write_sample(tmp_path, f"t{i}", (96, 96), BOXES) for i in range(4)]
    val_samples = [write_sample(tmp_path, f"v{i}", (96, 96), BOXES) for i in range(3)]
    seen = []
    validate = utils.trainer.validate

    def recording_validate(model, loader, *args, **kwargs):
        images = torch.cat([batch[0] for batch in loader])
        seen.append((images, [w.pid for w in loader._iterator._workers]))
        for s in val_samples:  # from now on only a cache has the validation images
            s.image.unlink(missing_ok=True)
        return validate(model, loader, *args, **kwargs)

    monkeypatch.setattr(utils.trainer, "validate", recording_validate)
    torch.manual_seed(0)
    settings = TrainSettings(model="yolov5n", epochs=2, batch_size=2, img_size=64, device=torch.device("cpu"),
                             seed=1, autoanchor=False, workers=1, cache=cache)
    utils.trainer.train(DetectionModel(architecture("yolov5n"), nc=1), train_samples, val_samples, settings,
                        lambda report, best, ema_model: True)
    (images0, workers0), (images1, workers1) = seen
    assert workers0 == workers1 and len(workers0) == 1
    assert images0.shape == images1.shape and images0.float().std() > 20  # drawn shapes, not a blank
    if cache:
        assert torch.equal(images0, images1)
    else:  # an image that cannot be read is validated as a blank
        assert bool((images1 == 114).all())


def test_disk_caches_leave_no_folder_when_training_fails_in_its_set_up_or_the_fill_fails(tmp_path, monkeypatch):
    """A failure after the caches are filled (here the optimiser's set-up), or while a cache fills (a full disk),
    removes the disk caches' folders all the same."""
    import tempfile

    import utils.trainer
    from models.architecture import architecture
    from models.yolo import DetectionModel
    from utils.train_settings import TrainSettings

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    train_samples = [write_sample(tmp_path, f"t{i}", (96, 96), BOXES) for i in range(4)]
    val_samples = [write_sample(tmp_path, f"v{i}", (96, 96), BOXES) for i in range(2)]

    def broken(self):
        assert len(list((tmp_path / "tmp").glob("yolov5-image-cache-*"))) == 2  # both caches were made
        raise RuntimeError("set-up failed")

    monkeypatch.setattr(utils.trainer.Trainer, "build_optimization", broken)
    settings = TrainSettings(model="yolov5n", epochs=1, batch_size=2, img_size=64, device=torch.device("cpu"),
                             seed=1, autoanchor=False, cache="disk")
    with pytest.raises(RuntimeError, match="set-up failed"):
        utils.trainer.train(DetectionModel(architecture("yolov5n"), nc=1), train_samples, val_samples, settings,
                            lambda report, best, ema_model: True)
    assert not list((tmp_path / "tmp").iterdir())

    saved, real_save = [], np.save

    def full_disk(path, array):
        if saved:
            raise OSError(28, "No space left on device")
        saved.append(path)
        real_save(path, array)

    monkeypatch.setattr(image_cache.np, "save", full_disk)
    with pytest.raises(OSError):
        TrainImages(train_samples, 64, dict(SCRATCH_LOW)).images.use_cache("disk")
    assert saved and not list((tmp_path / "tmp").iterdir())


def test_loader_workers_run_opencv_on_their_one_thread_and_the_main_process_keeps_its_pool(tmp_path, monkeypatch):
    """Each training and validation worker runs OpenCV without a thread pool (workers are the parallelism: N workers
    x a pool per core would oversubscribe the cores); the main process's pool (3 threads here, on any machine) is
    left as it was, and a forked worker would inherit it without the worker's own set-up."""
    import utils.trainer
    from models.architecture import architecture
    from models.yolo import DetectionModel
    from utils.train_settings import TrainSettings

    record = tmp_path / "threads.txt"

    def recording(kind, collate):
        def collate_and_record(items):  # runs in the worker that made the batch
            with open(record, "a") as f:
                f.write(f"{kind} {torch.utils.data.get_worker_info() is not None} {cv2.getNumThreads()}\n")
            return collate(items)
        return collate_and_record

    monkeypatch.setattr(utils.trainer, "collate_train", recording("train", utils.trainer.collate_train))
    monkeypatch.setattr(utils.trainer, "collate_val", recording("val", utils.trainer.collate_val))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(3)
    samples = [write_sample(tmp_path, f"t{i}", (96, 96), BOXES) for i in range(4)]
    settings = TrainSettings(model="yolov5n", epochs=1, batch_size=2, img_size=64, device=torch.device("cpu"),
                             seed=1, autoanchor=False, workers=1)
    try:
        utils.trainer.train(DetectionModel(architecture("yolov5n"), nc=1), samples, samples[:2], settings,
                            lambda report, best, ema_model: True)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(threads)
    lines = set(record.read_text().splitlines())
    assert lines == {"train True 1", "val True 1"}, lines
