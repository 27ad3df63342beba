"""One timed case of bench/engine_speed.py, run in the product's venv (`ours`) or the oracle's (`oracle`).

    engine_worker.py SIDE KIND MODEL SIZE BATCH SECONDS DATA_DIR   ->  prints {"images_per_s": ..., "steps": ...}

SIDE is `ours` (the product's path: onnxruntime on a CPU for inference), `ours-torch` (our torch model run
eagerly, which the product uses on GPUs and where onnxruntime is unavailable) or `oracle`.

KIND is `infer` (uint8 batch -> normalised on the device -> fused model -> NMS at conf 0.25 / IoU 0.45, as
YOLOv5's detect.py does) or `train` (forward, loss, backward, SGD step). Both sides load the same weights and
inputs from DATA_DIR, and run with 2 torch threads.
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
CONF, IOU, MAX_DET = 0.25, 0.45, 1000


def load(path):
    kwargs = {"weights_only": True} if "weights_only" in torch.load.__code__.co_varnames else {}
    return torch.load(str(path), **kwargs)


def ours(kind, name, data, backend="product"):
    from models.yolo import DetectionModel

    model = DetectionModel(name, nc=80)
    model.load_state_dict(data["state_dict"])
    if kind == "infer":
        from utils.inference import Detector, make_detector
        from utils.nms import non_max_suppression

        cpu = torch.device("cpu")
        detector = make_detector(model, cpu, data["size"]) if backend == "product" else Detector(model, cpu)

        def step(images):
            decoded, _ = detector(images)
            return non_max_suppression(decoded, CONF, IOU, max_det=MAX_DET)
        return step
    from utils.hyperparameters import SCRATCH_LOW
    from utils.loss import YoloLoss
    from utils.optim import build_optimizer

    model.train().to(memory_format=torch.channels_last)  # as utils/trainer.py trains
    loss_fn = YoloLoss(model.detect, dict(SCRATCH_LOW))
    optimizer = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)

    def step(images):
        images = images.contiguous(memory_format=torch.channels_last)
        loss, _ = loss_fn(model(images.float() / 255), data["targets"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def oracle(kind, name, data):
    sys.path.insert(0, str(REPO / "tests" / "oracle"))
    import oracle_tool  # sets the original up to run offline

    model = oracle_tool.build(name, 80)
    model.load_state_dict(data["state_dict"])
    if kind == "infer":
        from yolov5.utils.general import non_max_suppression

        model = model.fuse().eval()

        @torch.inference_mode()
        def step(images):
            x = images.float()
            x /= 255
            return non_max_suppression(model(x)[0], CONF, IOU, None, False, max_det=MAX_DET)
        return step
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import smart_optimizer

    sys.path.insert(0, str(REPO))
    from utils.hyperparameters import SCRATCH_LOW  # the same values as the original's hyp.scratch-low.yaml

    model.train()
    model.hyp = dict(SCRATCH_LOW)
    loss_fn = ComputeLoss(model)
    optimizer = smart_optimizer(model, "SGD", 0.01, 0.937, 5e-4)

    def step(images):
        loss, _ = loss_fn(model(images.float() / 255), data["targets"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def main():
    side, kind, name, size, batch, seconds, data_dir = sys.argv[1:8]
    size, batch, seconds = int(size), int(batch), float(seconds)
    torch.set_num_threads(2)
    data_dir = Path(data_dir)
    data = {"state_dict": load(data_dir / f"{name}.pt"), "targets": load(data_dir / f"targets_{batch}.pt"),
            "size": size}
    images = load(data_dir / f"images_{size}.pt")[:batch]
    if side == "oracle":
        step = oracle(kind, name, data)
    else:
        step = ours(kind, name, data, "torch" if side == "ours-torch" else "product")
    for _ in range(2):  # warm-up
        step(images)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        step(images)
        times.append(time.perf_counter() - t)
    print(json.dumps({"images_per_s": batch / statistics.median(times), "steps": len(times)}))


if __name__ == "__main__":
    main()
