"""The GPU check's dry run: every step runs at toy sizes on the CPU (CUDA-only ones say what they would measure),
so that the script works the first time a GPU machine is lent."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import HANG_LIMIT, REPO

ORACLE_SITE = next((REPO / ".venvs" / "oracle" / "lib").glob("python3*/site-packages"), None)
# What the original YOLOv5 imports beyond this venv's packages, as tools/gpu_check.sh --prepare carries it; the
# plotting and data-frame libraries stay out, as on the GPU machine (bench/original_offline.py stands in for them)
CARRIED = ("yolov5", "ultralytics", "thop", "tqdm", "psutil", "requests", "urllib3", "idna", "certifi",
           "charset_normalizer", "dateutil", "six.py", "pkg_resources", "setuptools", "_distutils_hack")


def original_site(tmp_path: Path) -> Path:
    site = tmp_path / "carried"
    site.mkdir()
    for name in CARRIED:
        (site / name).symlink_to(ORACLE_SITE / name)
    return site


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_reports_each(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(original_site(tmp_path)))
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "report")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG_LIMIT, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:]
    report = json.loads((tmp_path / "report/gpu-check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["environment", "training task", "mining + inference task", "CUDA against CPU",
                           "AMP against fp32", "training speed", "inference speed", "mining cost", "GPU memory"]
    assert all(s["status"] == "ok" for name, s in steps.items() if name != "GPU memory"), steps
    assert steps["GPU memory"]["status"] == "skipped: needs CUDA (dry run)" and steps["GPU memory"]["measures"]
    assert all(s["seconds"] >= 0 and s["measures"] for s in steps.values())
    # the original YOLOv5 ran with stand-ins for the libraries the GPU machine lacks
    assert "importable (stand-ins for ['matplotlib', 'pandas'" in steps["environment"]["figures"]["original_yolov5"]
    assert steps["training speed"]["figures"]["original step alone images/s"] > 0
    assert any(key.startswith("original fp32 batch") for key in steps["inference speed"]["figures"])
    assert steps["training task"]["figures"]["files"] == ["best.pt", "best.onnx"]
    assert steps["mining cost"]["figures"]["cald cost (x inference)"] > 0
    markdown = (tmp_path / "report/gpu-check.md").read_text()
    assert "| GPU memory | skipped: needs CUDA (dry run) |" in markdown


def test_without_a_gpu_the_real_run_refuses_in_one_line(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU, even on a machine that has one
    proc = subprocess.run(["bash", str(REPO / "tools/gpu_check.sh"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=HANG_LIMIT, env=env)
    assert proc.returncode == 2 and "no CUDA device here: run with --dry-run" in proc.stderr
    assert not (tmp_path / "r").exists()
