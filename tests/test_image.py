"""The CPU image built by a real container engine and run exactly as YMIR runs it.

Dockerfile.cpu is built from a local Debian bookworm + Python 3.11 base (no registry is needed) without bundled
weights. Then, as the platform does: the templates and manifest are read with `IMAGE cat`; a training task whose
/in is written by YMIR's own exporter (ymir-cmd) runs through the default command with /in read-only, /out
writable, an arbitrary uid, no HOME and no network; YMIR's code packs the trained model and unpacks its best stage
into the /in of a mining + inference task, which runs the same way; every output is read by ymir-cmd 2.0.0 and
2.3.0, and /in is byte-identical afterwards. The images are removed at the end. With YMIR_TEST_IMAGE set, the
tests use that image instead of building one.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from models.yolo import DetectionModel
from tests.helpers import (
    REPO,
    YMIR_CMD_VERSIONS,
    make_media,
    make_read_only,
    readable_tmp_dir,
    tree_fingerprint,
    ymir_cmd,
)
from tests.image.engine import Engine
from utils.checkpoint import save_checkpoint
from ymir.local.demo import CLASS_NAMES

UID = "4321:4321"  # no such user in the image: YMIR may use any
TASK_ID = "t0000001000001abcdef1663839849"
TRAINING = {"model": "yolov5n", "epochs": 2, "img_size": 64, "batch_size_per_gpu": 8, "num_workers_per_gpu": 1,
            "args_options": "--hyp lr0=0.001 warmup_epochs=0", "gpu_id": "", "gpu_count": 0}
# a low threshold, so that the briefly trained model's boxes reach the platform's parser
MINING = {"img_size": 64, "batch_size_per_gpu": 4, "num_workers_per_gpu": 1, "conf_thres": 0.001, "max_det": 20,
          "gpu_id": "", "gpu_count": 0}


@pytest.fixture(scope="module")
def workdir():
    """A folder that the container's arbitrary uid can read."""
    with readable_tmp_dir("ymir-image-") as path:
        yield path


@pytest.fixture(scope="module")
def engine():
    return Engine()


@pytest.fixture(scope="module")
def image(engine, workdir, pytestconfig):
    if os.environ.get("YMIR_TEST_IMAGE"):  # an image built by hand, e.g. while changing the test: used as it is
        yield os.environ["YMIR_TEST_IMAGE"]
        return
    run_id, size = uuid.uuid4().hex[:12], ""
    base, name = f"localhost/ymir-test-base:{run_id}", f"localhost/ymir-yolov5-test:{run_id}"
    try:
        engine.local_base(base)
        engine.timed("build", "build", "-f", "Dockerfile.cpu", "-t", name,
                     "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "BUNDLE_WEIGHTS=0",
                     # PyTorch's own index cannot be reached here: torch comes from the configured indexes, and
                     # torchvision, whose CPU build only that index has, is left out (plain-torch NMS)
                     "--build-arg", "TORCH_INDEX=", "--build-arg", "TORCHVISION_VERSION=",
                     *engine.build_args(workdir), ".", cwd=REPO, timeout=2400)
        yield name
        size = f", image size {int(engine('image', 'inspect', '--format', '{{.Size}}', name).stdout) / 1e6:.0f} MB"
    finally:
        engine.remove_images(name, base)
        with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(f"\nimage test ({engine.name}): " + ", ".join(f"{k} {v:.0f} s" for k, v in engine.timings.items())
                  + size)


def test_img_man_and_labels_as_ymir_reads_them(engine, image):
    for template in ("training", "mining", "infer"):
        shown = engine("run", "--rm", "--network", "none", image, "cat", f"/img-man/{template}-template.yaml")
        assert shown.stdout == (REPO / f"{template}-template.yaml").read_text()
        assert isinstance(yaml.safe_load(shown.stdout), dict)
    manifest = engine("run", "--rm", "--network", "none", image, "cat", "/img-man/manifest.yaml").stdout
    assert yaml.safe_load(manifest) == {"object_type": 2}
    labels = json.loads(engine("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.base.name"] != "python:3.11-slim-bookworm"  # the local base
    # BUNDLE_WEIGHTS=0: the digest list is there and empty, no weights file
    listing = engine("run", "--rm", "--network", "none", image, "ls", "-A", "/app/weights").stdout.split()
    assert listing == ["SHA256SUMS"]
    shown = engine("run", "--rm", "--network", "none", image, "cat", "/app/weights/SHA256SUMS")
    assert shown.stdout == ""


def platform_in(root: Path, task: str, assets, executor_config: dict, **extra) -> Path:
    """/in written by YMIR's own code (ymir-cmd 2.3.0's exporter and config writers)."""
    in_dir = root / "in"
    root.mkdir()
    spec = {"task": task, "in_dir": str(in_dir), "media_dir": str(root.parent / "media"), "task_id": TASK_ID,
            "class_names": list(CLASS_NAMES), "assets": assets, "executor_config": executor_config, **extra}
    (root / "spec.json").write_text(json.dumps(spec))
    result = ymir_cmd("2.3.0", "make-in", root / "spec.json")
    assert result["ok"], result.get("trace")
    return in_dir


def run_as_ymir(engine, image, root: Path, step: str, *mounts: str):
    """The default command, as the platform starts it: /in read-only, /out writable, any uid, no network, and
    the platform's other mounts (the targets of the links it placed in /in)."""
    in_dir, out_dir = root / "in", root / "out"
    out_dir.mkdir()
    os.chmod(out_dir, 0o777)
    make_read_only(in_dir)
    before = tree_fingerprint(in_dir)
    volumes = [f"{in_dir}:/in:ro", f"{out_dir}:/out", *mounts]
    result = engine.timed(step, "run", "--rm", "--network", "none", "--user", UID,
                          *[arg for volume in volumes for arg in ("-v", volume)], image, check=False, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert tree_fingerprint(in_dir) == before, "the task changed something under /in"
    monitor = ymir_cmd("2.3.0", "monitor", out_dir / "monitor.txt")
    # done: running (2) at 100 %; the platform itself writes state 3 once it has packed the results
    assert (monitor["task_id"], monitor["state"], monitor["percent"]) == (TASK_ID, 2, 1.0)
    assert {p.stat().st_uid for p in out_dir.rglob("*")} == {int(UID.split(":")[0])}
    return out_dir


def test_image_trains_then_mines_and_infers_as_ymir_runs_it(engine, image, workdir):
    media = workdir / "media"
    assets = make_media(media, 24, seed=0)
    template = yaml.safe_load(engine("run", "--rm", "--network", "none", image, "cat",
                                     "/img-man/training-template.yaml").stdout)
    train = workdir / "train"
    # the user's earlier model, with a raised objectness prior: two epochs then leave a model whose boxes reach
    # the platform's parser (two epochs from scratch find none)
    in_dir = platform_in(train, "training", assets, dict(template, **TRAINING), export_format="ark:raw",
                         pretrained_model_params=["/in/models/earlier/best.pt"])
    eager = DetectionModel("yolov5n", nc=len(CLASS_NAMES))
    with torch.no_grad():
        for conv in eager.detect.m:
            conv.bias.view(eager.detect.na, -1)[:, 4] += 5.0
    (in_dir / "models" / "earlier").mkdir(parents=True)
    save_checkpoint(in_dir / "models" / "earlier" / "best.pt", eager, list(CLASS_NAMES))
    trained = run_as_ymir(engine, image, train, "training task")

    handed_over = workdir / "mine"
    for version in YMIR_CMD_VERSIONS:  # the platform packs the model; its best stage is what a later task gets
        packed = ymir_cmd(version, "pack", trained, workdir / f"pack-{version}")
        assert packed["ok"], packed.get("trace")
        assert packed["best_stage_name"] == "best" and "best" in packed["stages"]
        assert {"best/best.pt", "best/best.onnx"} <= set(packed["unpacked"]["best"])
    template = yaml.safe_load(engine("run", "--rm", "--network", "none", image, "cat",
                                     "/img-man/mining-template.yaml").stdout)
    candidates = make_media(media, 10, seed=1)
    in_dir = platform_in(handed_over, "mining+infer", candidates, dict(template, **MINING),
                         model_params_path=["/in/models/best/best.pt", "/in/models/best/best.onnx"])
    shutil.copytree(workdir / "pack-2.3.0" / "unpacked" / "best", in_dir / "models")
    # the platform links each candidate to its media store (index lines like /in/assets/../../../media/ab/<sha1>)
    # and mounts the store where the links lead
    first = (in_dir / "candidate-index.tsv").read_text().split()[0]
    media_in_container = os.path.normpath(first).rsplit("/", 2)[0]
    out_dir = run_as_ymir(engine, image, handed_over, "mining + inference task", f"{media}:{media_in_container}:ro")

    ids = sorted(a["sha1"] for a in candidates)
    detection = json.loads((out_dir / "infer-result.json").read_text())["detection"]
    assert sorted(name.split(".")[0] for name in detection) == ids  # every candidate, with or without boxes
    assert sum(len(image["boxes"]) for image in detection.values()) > 0, (out_dir / "infer-result.json").read_text()
    for version in YMIR_CMD_VERSIONS:
        top = ymir_cmd(version, "topk", out_dir / "result.tsv", 4)
        assert top["ok"] and len(top["ids"]) == 4 and set(top["ids"]) <= set(ids)
        (workdir / "spec.json").write_text(json.dumps({"class_names": list(CLASS_NAMES), "asset_ids": ids}))
        inferred = ymir_cmd(version, "infer", out_dir, workdir / "spec.json")
        assert inferred["ok"], inferred.get("trace")
        boxes = [b for image in inferred["images"].values() for b in image]
        assert set(inferred["images"]) <= set(ids) and boxes
        assert all(b["class_name"] in CLASS_NAMES and 0 <= b["score"] <= 1 for b in boxes)
    scores = [float(line.split("\t")[1]) for line in (out_dir / "result.tsv").read_text().splitlines()]
    assert len(scores) == len(candidates) and min(scores) >= 0  # every candidate read and scored
