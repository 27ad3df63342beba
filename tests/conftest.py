import logging

import pytest

from ymir.local.demo import make_workdir

# Modules whose every test runs whole tasks (start.py), trainings, containers or the platform's own code.
SLOW_MODULES = {"test_start", "test_train_task", "test_predict_task", "test_distributed", "test_image",
                "test_training_parity", "test_yolov5_checkpoint", "test_ymir_cmd", "test_hostile_inputs"}


def pytest_collection_modifyitems(config, items):
    """`-m "not slow"` (tools/test.sh --fast) leaves the inner loop: the engine's math, parity with the original
    on single operations, readers and writers; CI runs everything."""
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def training_workdir(tmp_path):
    return make_workdir(tmp_path / "task", "training", num_train=8, num_val=4)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)
