import logging

import pytest

from ymir.demo import make_workdir


@pytest.fixture
def training_workdir(tmp_path):
    return make_workdir(tmp_path / "task", "training", num_train=8, num_val=4)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.INFO)
