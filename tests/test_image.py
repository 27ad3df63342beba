"""The CPU image built by a real container engine and run exactly as YMIR runs it.

Dockerfile.cpu is built from a local Debian bookworm + Python 3.11 base (no registry is needed) without bundled
weights. Then, as the platform does: the templates and manifest are read with `IMAGE cat`; a training task whose
/in is written by YMIR's own exporter (ymir-cmd) runs through the default command with /in read-only, /out
writable, an arbitrary uid, no HOME and no network; YMIR's code packs the trained model and unpacks its best stage
into the /in of a mining + inference task, which runs the same way; every output is read by ymir-cmd 2.0.0 and
2.3.0, and /in is byte-identical afterwards. The images are removed at the end. With YMIR_TEST_IMAGE set, the
tests use that image instead of building one.

The GPU image (Dockerfile.cu128) goes through the same tests when asked for (YMIR_TEST_GPU_IMAGE=1, or the name of
an image built by hand; `tools/test.sh --gpu-image`): built from the same local base with PyPI's default torch
2.9.1 wheel, the CUDA 12.8 build, whose CUDA runtime, cuDNN, cuBLAS and NCCL come as nvidia-* packages (about
7 GB, so it is not part of the suite). Without a GPU it must carry that stack, say CUDA is not available, and run
every task on the CPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Tuple

import pytest
import torch
import yaml

from models.yolo import DetectionModel
from tests.helpers import (
    HANG_LIMIT,
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
# Each image the test can build: its Dockerfile and the build arguments this machine needs. PyTorch's own index
# cannot be reached here: torch comes from the configured indexes (local wheels, PyPI).
VARIANTS = {
    # torchvision, whose CPU build only PyTorch's index has, is left out (plain-torch NMS)
    "cpu": ("Dockerfile.cpu", {"TORCH_INDEX": "", "TORCHVISION_VERSION": ""}),
    # the local base's Python is Debian bookworm's 3.11; PyPI's default torch 2.9.1 is the +cu128 build
    "cu128": ("Dockerfile.cu128", {"PYTHON": "python3.11", "TORCH_VERSION": "2.9.1",
                                   "TORCHVISION_VERSION": "0.24.1", "TORCH_INDEX": ""}),
}
GPU_IMAGE = os.environ.get("YMIR_TEST_GPU_IMAGE", "")  # "1": build it; another value: the image to test
# What torch in each image was built with, and the NVIDIA runtime's variables (only the GPU image sets them)
CPU_TORCH, CU128_TORCH = "2.13.0+cpu", "2.9.1+cu128"  # the torch each Dockerfile installs
STACKS = {
    "cpu": {"torch": CPU_TORCH, "cuda": None, "cudnn": False, "nccl": False, "nvidia_env": {},
            "cpu_line": f"running on the CPU: config gpu_id is empty and this torch ({CPU_TORCH}) is a CPU-only build"},
    "cu128": {"torch": CU128_TORCH, "cuda": "12.8", "cudnn": True, "nccl": True,
              "nvidia_env": {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
              "cpu_line": f"running on the CPU: config gpu_id is empty; torch {CU128_TORCH} is built with CUDA 12.8 "
                          "but CUDA is not available here (no GPU or driver visible)"},
}
# Inside the image, as YMIR's uid with no network: torch's build, what it loaded, and what the image should not hold
PROBE = r"""
import glob, json, os, re, shutil, sys
# what the build left behind, looked at before anything runs (a run writes its own temporary folders)
caches = [p for pattern in ("/root/.cache/*", "/tmp/.cache/*", "/tmp/pip-*", "/tmp/tmp*",
                            "/var/cache/apt/archives/*.deb", "/var/lib/apt/lists/*_Packages*")
          for p in glob.glob(pattern)]
compilers = [c for c in ("gcc", "cc", "g++", "nvcc", "ptxas", "make") if shutil.which(c)]
import torch
out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
       "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count()}
try:
    import torchvision
    out["torchvision"] = torchvision.__version__
except ImportError:
    out["torchvision"] = None
try:
    out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as exc:  # the CPU build has none
    out["nccl"] = None
    out["nccl_error"] = type(exc).__name__
out["archs"] = torch._C._cuda_getArchFlags() if out["cuda"] else None
with open("/proc/self/maps") as maps:  # the CUDA libraries that importing torch loaded, and from where
    paths = {line.split()[-1] for line in maps if "/nvidia/" in line and ".so" in line}
out["loaded"] = sorted(p.split("site-packages/")[-1] for p in paths)
libraries = {}
for root in ("/opt", "/usr", "/app"):
    for dirpath, _, files in os.walk(root):
        for name in files:
            if re.fullmatch(r"lib.*\.so(\.\d+)*", name) and not os.path.islink(os.path.join(dirpath, name)):
                libraries.setdefault(name, []).append(dirpath)
out["libraries"] = len(libraries)
out["duplicates"] = {name: dirs for name, dirs in libraries.items() if len(dirs) > 1}
out["caches"], out["compilers"] = caches, compilers
print(json.dumps(out))
"""
TASK_ID = "t0000001000001abcdef1663839849"
TRAINING = {"model": "yolov5n", "epochs": 2, "img_size": 64, "batch_size_per_gpu": 8, "num_workers_per_gpu": 1,
            "args_options": "--hyp lr0=0.001 warmup_epochs=0", "gpu_id": "", "gpu_count": 0}
# a low threshold, so that the briefly trained model's boxes reach the platform's parser
MINING = {"img_size": 64, "batch_size_per_gpu": 4, "num_workers_per_gpu": 1, "conf_thres": 0.001, "max_det": 20,
          "gpu_id": "", "gpu_count": 0}


@pytest.fixture(scope="module", params=["cpu"] + ([pytest.param("cu128", marks=pytest.mark.gpu_image)]
                                                  if GPU_IMAGE else []))
def variant(request):
    return request.param


@pytest.fixture(scope="module")
def workdir(variant):
    """A folder that the container's arbitrary uid can read."""
    with readable_tmp_dir(f"ymir-image-{variant}-") as path:
        yield path


@pytest.fixture(scope="module")
def engine(variant):
    return Engine()


@pytest.fixture(scope="module")
def image(engine, workdir, variant, pytestconfig):
    given = os.environ.get("YMIR_TEST_IMAGE") if variant == "cpu" else (GPU_IMAGE if GPU_IMAGE != "1" else "")
    if given:  # an image built by hand, e.g. while changing the test: used as it is
        yield given
        return
    run_id, size = uuid.uuid4().hex[:12], ""
    base, name = f"localhost/ymir-test-base:{run_id}", f"localhost/ymir-yolov5-test:{variant}-{run_id}"
    dockerfile, build_args = VARIANTS[variant]
    try:
        engine.local_base(base)
        engine.timed("build", "build", "-f", dockerfile, "-t", name,
                     "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "BUNDLE_WEIGHTS=0",
                     *[arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")],
                     *engine.build_args(workdir), ".", cwd=REPO, timeout=2400 if variant == "cpu" else 5400)
        yield name
        size = f", image size {int(engine('image', 'inspect', '--format', '{{.Size}}', name).stdout) / 1e6:.0f} MB"
    finally:
        engine.remove_images(name, base)
        with pytestconfig.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            print(f"\n{dockerfile} image test ({engine.name}): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in engine.timings.items()) + size)


def test_torch_stack_in_the_image_and_nothing_it_does_not_need(engine, image, variant, capsys):
    """torch's build as YMIR's uid sees it without a GPU (the GPU image: CUDA 12.8, cuDNN and NCCL present, CUDA
    not available); the NVIDIA runtime's variables; one copy of each shared library, no caches, no compilers."""
    expected = STACKS[variant]
    shown = engine("run", "--rm", "--network", "none", "--user", UID, image, "python3", "-c", PROBE)
    stack = json.loads(shown.stdout.strip().splitlines()[-1])
    with capsys.disabled():  # the numbers the README quotes
        print(f"\n{variant} image: " + json.dumps({k: v for k, v in stack.items() if k != "duplicates"}))
    assert stack["torch"] == expected["torch"]
    if expected["cuda"] is None:
        assert stack["cuda"] is None and "+cu" not in stack["torch"]
    else:
        assert stack["cuda"].startswith(expected["cuda"]), stack
        assert [lib for lib in ("libcudart", "libcublas", "libcudnn", "libnccl")
                if not any(f"/{lib}." in path for path in stack["loaded"])] == [], stack["loaded"]
    if stack["torchvision"]:  # built for the same CUDA as torch
        assert stack["torchvision"].partition("+")[2] == stack["torch"].partition("+")[2], stack
    assert (stack["cudnn"] is not None) == expected["cudnn"], stack
    assert (stack["nccl"] is not None) == expected["nccl"], stack
    assert stack["cuda_available"] is False and stack["device_count"] == 0
    env = dict(line.split("=", 1) for line in json.loads(
        engine("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout))
    assert {k: v for k, v in env.items() if k.startswith("NVIDIA_")} == expected["nvidia_env"]
    assert stack["duplicates"] == {}, stack["duplicates"]
    assert stack["caches"] == [] and stack["compilers"] == [], stack


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


def run_as_ymir(engine, image, root: Path, step: str, *mounts: str) -> Tuple[Path, str]:
    """The default command, as the platform starts it: /in read-only, /out writable, any uid, no network, and
    the platform's other mounts (the targets of the links it placed in /in). Returns /out and the console."""
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
    return out_dir, result.stdout + result.stderr


def test_image_trains_then_mines_and_infers_as_ymir_runs_it(engine, image, workdir, variant):
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
    trained, console = run_as_ymir(engine, image, train, "training task")
    assert STACKS[variant]["cpu_line"] in console  # why a GPU image runs on the CPU, in one line

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
    out_dir, console = run_as_ymir(engine, image, handed_over, "mining + inference task",
                                   f"{media}:{media_in_container}:ro")
    assert STACKS[variant]["cpu_line"] in console

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


def test_the_gpu_check_runs_inside_the_image(engine, image, variant, workdir):
    """tools/gpu_check.sh --image: the prepared GPU check run by the image's own Python, torch and packages (here
    its dry run, without a GPU), with no network; its report names the image and the image's torch."""
    out = workdir / "gpu-check"
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--image", image, "--dry-run", "--out", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG_LIMIT,
                          env=dict(os.environ, GPU_CHECK_ENGINE=" ".join(engine.command)))
    assert proc.returncode == 0, proc.stdout[-4000:]
    steps = {s["name"]: s for s in json.loads((out / "gpu-check.json").read_text())["steps"]}
    environment = steps["environment"]["figures"]
    assert environment["image"] == image and environment["python_executable"].startswith("/opt/venv/")
    assert environment["torch"] == STACKS[variant]["torch"] and environment["cuda_available"] is False
    if STACKS[variant]["cuda"] is None:
        assert environment["torch_cuda"] is None
    else:
        assert environment["torch_cuda"].startswith(STACKS[variant]["cuda"])
    assert all(s["status"] == "ok" for name, s in steps.items() if name != "GPU memory"), steps
    assert steps["training task"]["figures"]["files"] == ["best.pt", "best.onnx"]
