#!/usr/bin/env bash
# The project's checks: lint (py38 target), the whole suite on the current torch, then the core tests -- every
# task end to end, checkpoints, ONNX, the sharded run -- on the oldest Python/torch among the images
# (Python 3.8 + torch 1.10.2, .venvs/floor). Needs tools/bootstrap.sh first. Arguments go to the main run.
# Every step runs even when an earlier one fails; the script ends with one summary and fails if any step did.
#   tools/test.sh --fast   the inner loop only: lint and the tests not marked slow (no whole task, training or
#                          container), on the current torch; CI runs everything
#   tools/test.sh --gpu-image   only the image test of Dockerfile.cu128, built here from the local base with
#                          PyPI's CUDA 12.8 torch (about 7 GB; see README); YMIR_TEST_GPU_IMAGE=IMAGE tests a
#                          built one instead
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--gpu-image" ]; then
  shift
  YMIR_TEST_GPU_IMAGE=${YMIR_TEST_GPU_IMAGE:-1} exec .venv/bin/python -m pytest -q -s -m gpu_image \
    --durations=5 tests/test_image.py "$@"
fi
if [ "${1:-}" = "--fast" ]; then
  shift
  .venv/bin/ruff check . || exit 1  # a lint failure ends the fast tier (never falls through to the whole run)
  exec .venv/bin/python -m pytest -q -m "not slow" --durations=5 "$@"
fi
FLOOR_TESTS=(
  tests/test_config.py tests/test_dataset.py tests/test_outputs.py tests/test_start.py tests/test_checkpoint.py
  tests/test_predict_task.py tests/test_export.py tests/test_onnx_detector.py
  tests/test_train_task.py::test_training_writes_stages_the_platform_packs
  tests/test_train_task.py::test_bundled_official_weights
  tests/test_train_task.py::test_an_opset_this_torch_cannot_write_is_a_config_error_before_training
  tests/test_distributed.py::test_two_process_sharded_mining_and_inference_equal_one_process
)
summary=()
failed=0
step() {  # step NAME COMMAND...: run it, record its outcome
  local name=$1 started=$SECONDS status
  shift
  "$@"
  status=$?
  if [ "$status" -eq 0 ]; then
    summary+=("  ok      $name ($((SECONDS - started)) s)")
  else
    summary+=("  FAILED  $name (exit $status, $((SECONDS - started)) s)")
    failed=1
  fi
}
step "lint (ruff)" .venv/bin/ruff check .
stack() { "$1" -c 'import sys, torch; print(f"Python {sys.version.split()[0]} + torch {torch.__version__}")'; }
main_stack=$(stack .venv/bin/python)
floor_stack=$(stack .venvs/floor/bin/python)
step "tests on $main_stack" .venv/bin/python -m pytest -q --durations=15 "$@"
echo "core tests on $floor_stack:"
step "core tests on $floor_stack" .venvs/floor/bin/python -m pytest -q -p no:cacheprovider "${FLOOR_TESTS[@]}"
echo "summary:"
printf '%s\n' "${summary[@]}"
exit "$failed"
