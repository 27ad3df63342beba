#!/usr/bin/env bash
# Prepare a fresh machine for running and testing ymir-yolov5:
#   .venv                    the product's Python 3.11 environment (torch CPU/CUDA build, requirements, test tools)
#   .venvs/ymir-cmd-2.0.0    YMIR's own platform code (PyPI ymir-cmd) on Python 3.8, for the contract tests
#   .venvs/ymir-cmd-2.3.0
#   .venvs/floor             Python 3.8 + torch 1.10.2, the oldest pair among the images (Dockerfile.cu111): the
#                            core tests run there too (tools/test.sh)
#   .venvs/oracle            the original YOLOv5 v7.0 (PyPI yolov5==7.0.14), a test-only oracle; it shares
#                            .venv's torch through a .pth file and keeps its own heavy dependency tree apart
#   podman, runc, mmdebstrap the image test's container engine (when no docker daemon answers) and local base
#                            image (tests/test_image.py), from Debian's packages
# Re-running it is cheap: existing environments are kept.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
FLOOR_TORCH_PINS="torch==1.10.2 torchvision==0.11.3"  # as in Dockerfile.cu111 (PyPI's build of the same release)
PYTHON=${PYTHON:-python3}
say() { echo "bootstrap: $*"; }

# The image test: a container engine (docker where its daemon answers, else podman + runc) and mmdebstrap for its
# local base image.
packages=()
command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
if ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; }; then
  command -v podman >/dev/null || packages+=(podman)
  command -v runc >/dev/null || packages+=(runc)
fi
if [ ${#packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing ${packages[*]} (Debian packages) for the image test"
    # another apt (a fresh machine's unattended upgrades) may hold the lock: wait for it rather than fail
    apt_wait=(-o DPkg::Lock::Timeout=900)
    apt-get "${apt_wait[@]}" update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -qq "${packages[@]}" >/dev/null
  else
    echo "bootstrap: warning: the image test needs ${packages[*]}; install them as root (it fails without them)" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
say "installing $TORCH_PINS and the pinned requirements into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-compile $TORCH_PINS
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
say "installing this checkout (editable: models, utils, ymir importable from anywhere) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .

find_python38() {
  if python3.8 -c 'pass' 2>/dev/null; then command -v python3.8; return; fi
  local root
  root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  ls "$root"/versions/3.8*/bin/python3.8 2>/dev/null | sort -V | tail -n 1
}

PY38=${PY38:-$(find_python38)}
if [ -z "$PY38" ]; then
  echo "bootstrap: Python 3.8 is needed for the ymir-cmd contract tests (YMIR's pinned PyYAML 5.4.1 builds only there)" >&2
  exit 1
fi
for version in 2.0.0 2.3.0; do
  venv=.venvs/ymir-cmd-$version
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import mir.commands.training' 2>/dev/null; then
    rm -rf "$venv"
    "$PY38" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "tests/contract/ymir-cmd-$version.txt"
  fi
done
if [ ! -x .venvs/floor/bin/python ] || ! .venvs/floor/bin/python -c 'import torch, torchvision, cv2, onnxruntime, pytest' 2>/dev/null; then
  rm -rf .venvs/floor
  "$PY38" -m venv .venvs/floor
  .venvs/floor/bin/python -m pip install -q --disable-pip-version-check --no-compile $FLOOR_TORCH_PINS
  .venvs/floor/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
fi
.venvs/floor/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
if [ ! -x .venvs/oracle/bin/python ] || ! .venvs/oracle/bin/python -c 'import yolov5' 2>/dev/null; then
  rm -rf .venvs/oracle
  "$PYTHON" -m venv .venvs/oracle
  site=$(.venvs/oracle/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  .venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/zz_product_venv.pth"
  .venvs/oracle/bin/python -m pip install -q --disable-pip-version-check -r tests/oracle-requirements.txt
fi
echo "bootstrap: ready (.venv, .venvs/ymir-cmd-2.0.0, .venvs/ymir-cmd-2.3.0, .venvs/floor, .venvs/oracle)"
