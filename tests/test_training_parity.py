"""Our training loop against the original's, step by step: same initial weights, same batches, same hyp."""
import numpy as np
import torch

import utils.trainer as trainer
from models.yolo import DetectionModel
from tests.helpers import oracle
from utils.hyperparameters import SCRATCH_LOW
from utils.train_settings import TrainSettings
from ymir.dataset import read_split
from ymir.local.demo import CLASS_NAMES, make_workdir
from ymir.paths import PathMapper

EPOCHS, BATCH, SIZE = 10, 4, 64  # 12 batches per epoch: 100 warm-up batches, then two epochs of schedule


def test_training_steps_equal_the_original(tmp_path, monkeypatch):
    work = make_workdir(tmp_path / "w", "training", num_train=48, num_val=4, image_size=(SIZE, SIZE), seed=5)
    mapper = PathMapper(work / "in", work / "out")
    train_samples, _ = read_split(work / "in" / "train-index.tsv", CLASS_NAMES, "ark", mapper, "train")
    val_samples, _ = read_split(work / "in" / "val-index.tsv", CLASS_NAMES, "ark", mapper, "val")
    nc = len(CLASS_NAMES)
    torch.manual_seed(0)
    model = DetectionModel("yolov5n", nc=nc)
    init = {k: v.clone() for k, v in model.state_dict().items()}

    batches, losses, lrs, ema_state = [], [], [], {}
    images_seen = []
    model.register_forward_pre_hook(lambda module, inputs: images_seen.append(inputs[0].detach().clone())
                                    if module.training else None)

    class RecordingLoss(trainer.YoloLoss):
        def __call__(self, preds, targets):
            total, items = super().__call__(preds, targets)
            image = (images_seen[-1] * 255).round().to(torch.uint8).contiguous()
            batches.append((image, targets.detach().clone()))
            losses.append(total.item())
            return total, items

    def on_epoch(report, best, ema_model):
        lrs.append(report.lrs)
        ema_state.update({k: v.detach().float().clone() for k, v in ema_model.state_dict().items()})
        return True

    monkeypatch.setattr(trainer, "YoloLoss", RecordingLoss)
    hyp = dict(SCRATCH_LOW, mosaic=0.5, lr0=0.02)
    settings = TrainSettings(epochs=EPOCHS, batch_size=BATCH, img_size=SIZE, hyp=hyp,
                                     device=torch.device("cpu"), seed=1, autoanchor=False)
    trainer.train(model, train_samples, val_samples, settings, on_epoch)
    nb = len(batches) // EPOCHS
    assert nb * EPOCHS == len(batches) and nb * BATCH >= len(train_samples)

    io = tmp_path / "io.pt"
    torch.save({"init": init, "batches": [batches[e * nb:(e + 1) * nb] for e in range(EPOCHS)], "hyp": hyp,
                "epochs": EPOCHS, "img_size": SIZE}, io)
    oracle("train_steps", io, "yolov5n", nc)
    expected = torch.load(io, weights_only=True)

    np.testing.assert_allclose(np.array(lrs), expected["lrs"].numpy(), rtol=1e-9, atol=0)
    np.testing.assert_allclose(np.array(losses), expected["losses"].numpy(), rtol=1e-4)
    for key, value in expected["ema"].items():
        torch.testing.assert_close(ema_state[key], value, rtol=1e-3, atol=1e-4, msg=key)
