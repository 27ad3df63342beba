#!/usr/bin/env bash
# The project's checks: lint (py38 target), the whole suite on the current torch, then the core tests -- every
# task end to end, checkpoints, ONNX, the sharded run -- on the oldest Python/torch among the images
# (Python 3.8 + torch 1.10.2, .venvs/floor). Needs tools/bootstrap.sh first. Arguments go to the main run.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOOR_TESTS=(
  tests/test_config.py tests/test_dataset.py tests/test_outputs.py tests/test_start.py tests/test_checkpoint.py
  tests/test_predict_task.py tests/test_export.py tests/test_onnx_detector.py
  tests/test_train_task.py::test_training_writes_stages_the_platform_packs
  tests/test_train_task.py::test_bundled_official_weights
  tests/test_train_task.py::test_an_opset_this_torch_cannot_write_is_a_config_error_before_training
  tests/test_distributed.py::test_two_process_sharded_mining_and_inference_equal_one_process
)
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
echo "core tests on Python 3.8 + torch $(.venvs/floor/bin/python -c 'import torch; print(torch.__version__)'):"
.venvs/floor/bin/python -m pytest -q -p no:cacheprovider "${FLOOR_TESTS[@]}"
