"""The test oracle: the original YOLOv5 v7.0 (PyPI yolov5==7.0.14), run in its own venv (.venvs/oracle).

`serve` answers commands given as JSON lines on stdin (the tests keep one such process per session);
otherwise one command from argv prints one JSON object on stdout:
    keys CFGS NCS                         state_dict key -> shape of the original's models
    checkpoint CFG NC CKPT IO SEED SIZE [BOOST]  a checkpoint saved the original way (classes pickled as models.*,
                                          fp16, stripped), plus IO: an input batch and the original's eval
                                          outputs for it (plain tensors, computed with the fp16-rounded weights)
"""
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLOV5_CONFIG_DIR", tempfile.mkdtemp(prefix="yolov5-config-"))
os.environ.setdefault("YOLO_CONFIG_DIR", os.environ["YOLOV5_CONFIG_DIR"])  # Ultralytics' settings: not in $HOME
_font = Path(os.environ["YOLOV5_CONFIG_DIR"]) / "Arial.ttf"
if not _font.exists():  # the original downloads a font otherwise; any TTF will do offline
    import matplotlib

    shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", _font)


@contextlib.contextmanager
def stdout_to_stderr():
    """Inside, file descriptor 1 and sys.stdout lead to stderr: what the original's libraries print (the
    Ultralytics package announces the settings file it creates on its first import; loggers made during
    the imports keep the stream they found) cannot mix with the JSON answers on stdout."""
    sys.stdout.flush()
    saved_fd, saved_stream = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_stream


with stdout_to_stderr():
    import torch
    import yolov5
    import yolov5.models.common
    import yolov5.models.yolo

ORIGINAL_MODULES = {"models": yolov5.models, "models.yolo": yolov5.models.yolo, "models.common": yolov5.models.common}


def build(cfg, nc):
    path = Path(yolov5.__file__).parent / "models" / f"{cfg}.yaml"
    if not path.exists():
        path = Path(yolov5.__file__).parent / "models" / "hub" / f"{cfg}.yaml"
    return yolov5.models.yolo.DetectionModel(str(path), ch=3, nc=int(nc))


def keys(cfgs, ncs):
    """For each architecture (comma-separated) and class count (comma-separated): keys, shapes, parameters."""
    result = {}
    for cfg in cfgs.split(","):
        for nc in ncs.split(","):
            model = build(cfg, nc)
            result[f"{cfg}@{nc}"] = {"keys": {k: list(v.shape) for k, v in model.state_dict().items()},
                                     "params": sum(p.numel() for p in model.parameters())}
    return result


def randomize(model, seed):
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def checkpoint(cfg, nc, ckpt_path, io_path, seed, size, objectness_boost="0"):
    model = build(cfg, nc)
    randomize(model, seed)
    with torch.no_grad():  # a raised objectness prior makes an untrained model find boxes
        for conv in model.model[-1].m:
            conv.bias.view(model.model[-1].na, -1)[:, 4] += float(objectness_boost)
    model.names = {i: f"class{i}" for i in range(int(nc))}
    model = model.half().float().eval()  # the weights a stripped fp16 checkpoint holds
    g = torch.Generator().manual_seed(int(seed) + 1)
    x = torch.rand(2, 3, int(size), int(size), generator=g)
    with torch.no_grad():
        decoded, levels = model(x)
    torch.save({"input": x, "decoded": decoded, "levels": list(levels)}, io_path)
    # pickle the classes under the names official releases use (models.yolo / models.common)
    for name, module in ORIGINAL_MODULES.items():
        sys.modules[name] = module
    for cls in (yolov5.models.yolo.DetectionModel, yolov5.models.yolo.Detect):
        cls.__module__ = "models.yolo"
    for cls in (yolov5.models.common.Conv, yolov5.models.common.C3, yolov5.models.common.Bottleneck,
                yolov5.models.common.SPPF, yolov5.models.common.Concat):
        cls.__module__ = "models.common"
    ckpt = {"epoch": -1, "best_fitness": None, "model": model.half(), "ema": None, "updates": None,
            "optimizer": None, "opt": {"imgsz": int(size), "hyp": {"lr0": 0.01}}, "git": None,
            "date": "2022-11-22T00:00:00"}
    torch.save(ckpt, ckpt_path)
    return {"saved": ckpt_path}


def nms(io_path, conf, iou, multi_label, agnostic, max_det):
    """IO holds `prediction` (B, N, 5 + nc); adds `detections` (list of (n, 6)) from the original's NMS."""
    from yolov5.utils.general import non_max_suppression

    io = torch.load(io_path, weights_only=True)
    io["detections"] = non_max_suppression(io["prediction"].clone(), float(conf), float(iou),
                                           multi_label=multi_label == "1", agnostic=agnostic == "1",
                                           max_det=int(max_det))
    torch.save(io, io_path)
    return {"images": len(io["detections"])}


def letterbox(io_path, size, auto):
    """IO holds `images` (list of HWC uint8 tensors); adds the original's letterboxed images and geometry."""
    from yolov5.utils.augmentations import letterbox as original_letterbox

    io = torch.load(io_path, weights_only=True)
    results = [original_letterbox(img.numpy(), int(size), auto=auto == "1") for img in io["images"]]
    io["letterboxed"] = [torch.from_numpy(r[0]) for r in results]
    io["geometry"] = [torch.tensor([*r[1], *r[2]], dtype=torch.float64) for r in results]
    torch.save(io, io_path)
    return {"images": len(results)}


def loss(io_path, cfg, nc):
    """IO holds `preds` (raw level maps), `targets` and `hyp`; adds the original's loss and components."""
    from yolov5.utils.loss import ComputeLoss

    io = torch.load(io_path, weights_only=True)
    model = build(cfg, nc)
    model.hyp = dict(io["hyp"])
    total, items = ComputeLoss(model)([p.clone() for p in io["preds"]], io["targets"].clone())
    io["loss"], io["items"] = total.detach(), items
    torch.save(io, io_path)
    return {"loss": float(total)}


def metrics(io_path):
    """IO holds `detections` and `labels` per image (val.py's layout); adds matches and ap_per_class results."""
    import numpy as np
    from yolov5.utils.metrics import ap_per_class
    from yolov5.val import process_batch

    io = torch.load(io_path, weights_only=True)
    iouv = torch.linspace(0.5, 0.95, 10)
    stats, correct_all = [], []
    for det, labels in zip(io["detections"], io["labels"]):
        correct = process_batch(det, labels, iouv) if len(det) else torch.zeros(0, 10, dtype=torch.bool)
        correct_all.append(correct)
        stats.append((correct, det[:, 4], det[:, 5], labels[:, 0]))
    stats = [torch.cat(x, 0).numpy() for x in zip(*stats)]
    tp, fp, p, r, f1, ap, classes = ap_per_class(*stats, names={i: str(i) for i in range(100)})
    io["correct"] = correct_all
    io["ap_per_class"] = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in
                          dict(tp=tp, fp=fp, p=p, r=r, f1=f1, ap=ap, classes=classes).items()}
    torch.save(io, io_path)
    return {"map50": float(ap[:, 0].mean()), "map": float(ap.mean())}


def train_steps(io_path, cfg, nc):
    """IO holds `init` (a state_dict), `batches` (per epoch, a list of (uint8 images, targets)), `hyp` (before
    the per-model scaling), `epochs` and `img_size`; replays train.py's optimisation on those batches (its
    optimizer groups, LambdaLR rewound as train.py does, warm-up of LR / momentum / accumulation, gradient
    clipping, ModelEMA) and adds `losses` (per batch), `lrs` (per epoch) and `ema` (the final EMA state).

    Weights and images are channels-last, as our trainer keeps them, so both sides round alike."""
    import math

    import numpy as np
    from torch.optim import lr_scheduler
    from yolov5.utils.loss import ComputeLoss
    from yolov5.utils.torch_utils import ModelEMA, smart_optimizer

    io = torch.load(io_path, weights_only=True)
    model = build(cfg, nc)
    model.load_state_dict(io["init"])
    model.train().to(memory_format=torch.channels_last)
    hyp, epochs, batches = dict(io["hyp"]), int(io["epochs"]), io["batches"]
    nominal, batch_size, nb = 64, int(batches[0][0][0].shape[0]), len(batches[0])
    accumulate = max(round(nominal / batch_size), 1)
    hyp["weight_decay"] *= batch_size * accumulate / nominal
    optimizer = smart_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])

    def lf(x):
        return (1 - x / epochs) * (1.0 - hyp["lrf"]) + hyp["lrf"]
    scheduler = lr_scheduler.LambdaLR(optimizer, lr_lambda=lf)
    ema = ModelEMA(model)
    nl = model.model[-1].nl
    hyp["box"] *= 3 / nl
    hyp["cls"] *= int(nc) / 80 * 3 / nl
    hyp["obj"] *= (int(io["img_size"]) / 640) ** 2 * 3 / nl
    model.hyp = hyp
    compute_loss = ComputeLoss(model)
    warmup = max(round(hyp["warmup_epochs"] * nb), 100)
    scheduler.last_epoch = -1
    last_step, losses, lrs = -1, [], []
    for epoch in range(epochs):
        optimizer.zero_grad()
        for i, (images, targets) in enumerate(batches[epoch]):
            step = i + nb * epoch
            if step <= warmup:
                accumulate = max(1, np.interp(step, [0, warmup], [1, nominal / batch_size]).round())
                for j, group in enumerate(optimizer.param_groups):
                    start = hyp["warmup_bias_lr"] if j == 0 else 0.0
                    group["lr"] = np.interp(step, [0, warmup], [start, group["initial_lr"] * lf(epoch)])
                    group["momentum"] = np.interp(step, [0, warmup], [hyp["warmup_momentum"], hyp["momentum"]])
            x = images.contiguous(memory_format=torch.channels_last).float() / 255
            loss, _ = compute_loss(model(x), targets)
            loss.backward()
            losses.append(float(loss))
            if step - last_step >= accumulate:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
                optimizer.step()
                optimizer.zero_grad()
                ema.update(model)
                last_step = step
        lrs.append([float(g["lr"]) for g in optimizer.param_groups])
        scheduler.step()
    assert not math.isnan(losses[-1])
    io["losses"], io["lrs"] = torch.tensor(losses, dtype=torch.float64), torch.tensor(lrs, dtype=torch.float64)
    io["ema"] = {k: v.detach().float().contiguous() for k, v in ema.ema.state_dict().items()}
    torch.save(io, io_path)
    return {"steps": len(losses)}


def detect(ckpt_path, io_path):
    """What detect.py and val.py do with a weights file: attempt_load with its default arguments (CPU, fused
    Conv+BatchNorm), then predict on IO's `input` batch (adds `decoded` and `detections`, its NMS as val.py runs
    it: conf 0.001, IoU 0.6, 300 per image). Run where only the original is importable."""
    import importlib.util

    from yolov5.models.experimental import attempt_load
    from yolov5.utils.general import non_max_suppression

    # As in a clone of the repository (detect.py, val.py, torch.hub's 'ultralytics/yolov5'), where `models` is the
    # only package of that name: the pickled models.common classes are the ones fuse() knows, so it fuses. (The
    # PyPI package alone unpickles them as a second copy of the modules, and its fuse() then skips every layer.)
    sys.modules.update(ORIGINAL_MODULES)
    model = attempt_load(ckpt_path)
    loaded_from = sys.modules[type(model).__module__].__file__
    assert loaded_from.startswith(str(Path(yolov5.__file__).parent)), loaded_from
    assert importlib.util.find_spec("ymir") is None, "the product is importable in the original's process"
    assert all(not hasattr(m, "bn") for m in model.modules() if type(m).__name__ == "Conv"), "not fused"
    io = torch.load(io_path, weights_only=True)
    with torch.no_grad():
        io["decoded"] = model(io["input"])[0]
    io["detections"] = non_max_suppression(io["decoded"].clone(), 0.001, 0.6, max_det=300)  # as val.py
    torch.save(io, io_path)
    return {"model": model, "classes": model.names, "stride": model.stride.tolist()}


def use_checkpoint(ckpt_path, io_path, data_yaml, out_dir):
    """What a YOLOv5 user does with a checkpoint file, with the original's own functions: load it
    (attempt_load, as detect.py and val.py do), predict on IO's `input` batch (adds `decoded` and `detections`,
    its NMS as val.py runs it: conf 0.001, IoU 0.6, 300 per image), open it as torch.hub would (yolov5.load:
    DetectMultiBackend + AutoShape), validate it on DATA_YAML (val.py) and export it to ONNX (export.py).

    Run in a process of its own where only the original is importable: `models` must resolve to its package."""
    import functools
    import inspect

    import numpy as np
    import yolov5.export
    import yolov5.val

    model = detect(ckpt_path, io_path)["model"]
    io = torch.load(io_path, weights_only=True)
    hub_model = yolov5.load(ckpt_path, device="cpu")  # what torch.hub.load(..., "custom", path) builds
    image = (io["input"][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # RGB, as AutoShape takes
    hub_boxes = hub_model(image, size=int(io["input"].shape[-1])).xyxy[0]
    size = int(io["input"].shape[-1])
    validation = yolov5.val.run(data=data_yaml, weights=ckpt_path, batch_size=4, imgsz=size, device="cpu",
                                workers=0, plots=False, project=out_dir, name="val", exist_ok=True)
    map50, map50_95 = validation[0][2:4]  # (mp, mr, map50, map, losses...), per-class maps, times
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.9 defaults to the dynamo
        legacy = torch.onnx.export  # exporter, which YOLOv5 v7.0 predates (as it predates weights-only loading)
        torch.onnx.export = functools.partial(legacy, dynamo=False)
    exported = yolov5.export.run(weights=ckpt_path, include=("onnx",), imgsz=(size, size), device="cpu")
    return {"classes": model.names, "stride": model.stride.tolist(), "hub_classes": hub_model.names,
            "hub_boxes": hub_boxes.tolist(),
            "map50": float(map50), "map50_95": float(map50_95), "onnx": [str(f) for f in exported if f]}


COMMANDS = {"loss": loss, "metrics": metrics, "keys": keys, "checkpoint": checkpoint, "nms": nms,
            "letterbox": letterbox, "train_steps": train_steps, "use_checkpoint": use_checkpoint,
            "detect": lambda ckpt, io: {k: v for k, v in detect(ckpt, io).items() if k != "model"}}

def serve():
    """One JSON list [command, *args] per input line -> one JSON result per output line (imports paid once)."""
    for line in sys.stdin:
        command, *args = json.loads(line)
        try:
            with stdout_to_stderr():
                result = {"ok": True, **COMMANDS[command](*args)}
        except Exception as exc:  # reported to the test, which fails with the trace
            import traceback

            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        with stdout_to_stderr():
            answer = COMMANDS[sys.argv[1]](*sys.argv[2:])
        print(json.dumps(answer))
