#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) in one call; its report goes to gpu-check/ (or --out DIR).
#
#   bash tools/gpu_check.sh --prepare            here, before a GPU run: the wheels the GPU machine lacks (onnx for
#                                                our export, the original YOLOv5 v7.0 for the comparison) into
#                                                .cache/gpu-wheels (about 25 MB), which the run carries along
#   bash tools/gpu_check.sh [--out DIR]          on the GPU machine (its own python3, torch and CUDA)
#   bash tools/gpu_check.sh --dry-run [--out DIR]  anywhere: every step at toy sizes on the CPU (CI runs this)
#   bash tools/gpu_check.sh --image IMAGE [--dry-run] [--out DIR]
#                                                the same check inside a built image (Dockerfile.cu128's, say): its
#                                                Python, torch and packages, with this checkout's bench/ and this
#                                                script mounted read-only, as this user, no network, every GPU
#                                                (docker --gpus all; podman through CDI). GPU_CHECK_ENGINE picks the
#                                                engine command (default: docker if its daemon answers, else podman)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.cache/gpu-wheels
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

image=
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--image" ]; then next=$((i + 1)); image=${!next:-}; break; fi
done
if [ -n "$image" ]; then
  engine=()
  if [ -n "${GPU_CHECK_ENGINE:-}" ]; then
    read -r -a engine <<< "$GPU_CHECK_ENGINE"
  elif command -v docker > /dev/null && docker info > /dev/null 2>&1; then
    engine=(docker)
  elif command -v podman > /dev/null; then
    engine=(podman)
  else
    echo "gpu_check: --image needs docker (with its daemon running) or podman, or GPU_CHECK_ENGINE" >&2
    exit 2
  fi
  out=gpu-check
  args=()
  gpus=(--gpus all)
  users=(--user "$(id -u):$(id -g)")
  if [[ ${engine[0]} == *podman* ]]; then
    gpus=(--device nvidia.com/gpu=all)
    # rootless podman maps this uid to itself only when asked
    [ "$(id -u)" != 0 ] && users+=(--userns=keep-id)
  fi
  while [ $# -gt 0 ]; do
    case $1 in
      --image) shift 2 ;;
      --out) out=${2:?--out needs a folder}; shift 2 ;;
      --dry-run) args+=(--dry-run); gpus=(); shift ;;
      *) args+=("$1"); shift ;;
    esac
  done
  mkdir -p "$out"
  out=$(CDPATH='' cd -- "$out" && pwd)
  mounts=(-v "$PWD/bench:/app/bench:ro" -v "$PWD/tools/gpu_check.sh:/app/tools/gpu_check.sh:ro" -v "$out:/gpu-check")
  [ -d "$WHEELS" ] && mounts+=(-v "$PWD/$WHEELS:/app/$WHEELS:ro")
  echo "gpu_check: in $image (${engine[*]})"
  # --shm-size: the loader's workers hand batches over in shared memory (the engines' default is 64 MB)
  exec "${engine[@]}" run --rm --network none --shm-size 16g "${users[@]}" -e GPU_CHECK_IMAGE="$image" \
    ${gpus[@]+"${gpus[@]}"} "${mounts[@]}" "$image" bash /app/tools/gpu_check.sh --out /gpu-check ${args[@]+"${args[@]}"}
fi

if [ "${1:-}" = "--prepare" ]; then
  # pinned; for CPython 3.12 on x86-64 Linux, the GPU machine's Python
  $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$WHEELS" \
    onnx==1.20.0 ml_dtypes==0.7.0 yolov5==7.0.14 ultralytics==8.4.190 thop==0.1.1.post2209072238 tqdm==4.70.1 \
    psutil==7.2.2 requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.18 charset_normalizer==3.5.2 \
    python-dateutil==2.9.0.post0 six==1.17.0 setuptools==80.10.2
  du -sh "$WHEELS"
  exit 0
fi

# Wheels whose distribution this Python lacks are unpacked into a temporary folder on PYTHONPATH (the machine's
# own packages are never shadowed); the check and the tasks it starts see them.
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  $PY - "$SITE" "$WHEELS"/*.whl <<'PY'
import importlib.metadata, re, sys, zipfile
try:
    from packaging.tags import sys_tags
except ImportError:
    from pip._vendor.packaging.tags import sys_tags
supported = {str(tag) for tag in sys_tags()}
site, wheels = sys.argv[1], sys.argv[2:]
for wheel in wheels:
    file = wheel.rsplit("/", 1)[-1]
    name = re.split(r"-\d", file, maxsplit=1)[0]
    python, abi, platform = file[:-len(".whl")].split("-")[-3:]
    if not any(f"{i}-{a}-{p}" in supported for i in python.split(".") for a in abi.split(".")
               for p in platform.split(".")):
        print(f"gpu_check: {file} is not built for this Python: left out")
        continue
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        zipfile.ZipFile(wheel).extractall(site)
        print(f"gpu_check: using the carried {file}")
PY
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# the product's packages, where this Python has not installed them (the GPU machine's own python3)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY bench/gpu_check.py "$@"
