"""Several processes on CPU (torchrun + gloo), as several GPUs would run: consistent weights, prompt failure."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import EXIT_LIMIT, HANG_LIMIT, START, make_read_only, wait_until_gone
from ymir.launch import free_port
from ymir.local.demo import make_workdir
from ymir.processes import descendants


def ddp_workdir(tmp_path, epochs):
    return make_workdir(tmp_path / "w", "training", num_train=16, num_val=6, image_size=(96, 128),
                        config={"epochs": epochs, "img_size": 96, "batch_size_per_gpu": 4, "num_workers_per_gpu": 0})


def start(work, out="out", console=None, **env):
    """start.py on the task folder; its console on a pipe, or in the file `console` (processes that wait for each
    other must not wait on a full pipe that nobody reads)."""
    make_read_only(work / "in")
    return subprocess.Popen([sys.executable, str(START), "--in", str(work / "in"), "--out", str(work / out)],
                            stdout=subprocess.PIPE if console is None else console.open("w"),
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "YMIR_CPU_PROCESSES": "2", **env})


def finish(proc, console=None) -> str:
    output, _ = proc.communicate(timeout=HANG_LIMIT)
    output = output if console is None else console.read_text()
    assert proc.returncode == 0, output[-3000:]
    return output


def test_two_processes_train_with_identical_weights_on_one_node_or_two(tmp_path):
    """Two processes on one node; then the same task as two nodes of one process each, as a cluster scheduler
    starts it (two executors on this machine, PET_NNODES / PET_NODE_RANK, meeting at MASTER_ADDR:MASTER_PORT):
    the same weights and mAP, one result.yaml written by the first node, nothing written by the second."""
    work = ddp_workdir(tmp_path, epochs=2)
    output = finish(start(work))
    checksums = dict(re.findall(r"rank (\d) final weights checksum (\w+)", output))
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]
    assert "batch 4 x 2" in output
    data = yaml.safe_load((work / "out" / "models" / "result.yaml").read_text())
    assert data["model_stages"]["best"]["files"] == ["best.pt", "best.onnx"]
    assert (work / "out" / "monitor.txt").read_text().strip().split("\t")[2:4] == ["1.0000", "2"]

    (work / "out-node1").mkdir()  # each node's own /out, as the scheduler mounts it
    nodes = {"PET_NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
             "YMIR_CPU_PROCESSES": "1"}
    consoles = [tmp_path / "node0.log", tmp_path / "node1.log"]
    node0 = start(work, "out-node0", consoles[0], PET_NODE_RANK="0", **nodes)
    node1 = start(work, "out-node1", consoles[1], PET_NODE_RANK="1", **nodes)
    outputs = [finish(node0, consoles[0]), finish(node1, consoles[1])]
    assert "node 0 of 2 (PET_NNODES/PET_NODE_RANK)" in outputs[0] and "this node writes /out" in outputs[0]
    assert "node 1 of 2" in outputs[1] and "this node writes nothing there" in outputs[1]
    assert "batch 4 x 2" in outputs[0]
    assert dict(re.findall(r"rank (\d) final weights checksum (\w+)", "".join(outputs))) == checksums
    two_nodes = yaml.safe_load((work / "out-node0" / "models" / "result.yaml").read_text())
    assert two_nodes["model_stages"]["best"]["mAP"] == data["model_stages"]["best"]["mAP"]
    assert sorted(two_nodes["model_stages"]) == sorted(data["model_stages"])
    assert (work / "out-node0" / "monitor.txt").read_text().strip().split("\t")[2:4] == ["1.0000", "2"]
    assert list((work / "out-node1").iterdir()) == []


def rank_pid(root_pid, rank):
    for pid in descendants(root_pid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"start.py" in cmd and b"torch.distributed.run" not in cmd:
            return pid
    return None


def test_a_killed_rank_fails_the_task_promptly_and_leaves_nothing(tmp_path):
    work = ddp_workdir(tmp_path, epochs=200)
    proc = start(work)
    victim, deadline = None, time.time() + HANG_LIMIT  # start-up is slow on a loaded machine: wait as long as it takes
    while time.time() < deadline and victim is None:
        monitor = (work / "out" / "monitor.txt").read_text().split("\t")
        if len(monitor) > 2 and float(monitor[2]) > 0.01:  # training is under way
            victim = rank_pid(proc.pid, 1)
        time.sleep(0.5)
    assert victim is not None, "rank 1 never started training"
    family = descendants(proc.pid)
    os.kill(victim, signal.SIGKILL)
    # promptly = without training on: the 200 epochs would take far longer than this limit on any machine
    output, _ = proc.communicate(timeout=EXIT_LIMIT)
    assert proc.returncode != 0
    fields = (work / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    assert fields[2:4] == ["1.0000", "4"]
    assert "process of the task failed" in output.strip().splitlines()[-1]
    left = wait_until_gone(family)
    assert not left, f"left behind: {left}"


@pytest.mark.parametrize("algorithm", ["cald", "diverse"])
def test_two_process_sharded_mining_and_inference_equal_one_process(tmp_path, algorithm):
    """Candidates split over 2 processes (gloo) and gathered on rank 0 give byte-identical results, including the
    unreadable candidates; CALD's seeded augmentations make it the most order-sensitive algorithm to check, and
    `diverse` ranks the whole pool at once from evidence every process gathers."""
    from tests.test_predict_task import workdir_with_bad_candidates

    outputs = {}
    for processes in ("1", "2"):
        work, good, bad = workdir_with_bad_candidates(tmp_path / processes, "mining+infer", algorithm=algorithm)
        proc = start(work, YMIR_CPU_PROCESSES=processes)
        output, _ = proc.communicate(timeout=HANG_LIMIT)
        assert proc.returncode == 0, output[-3000:]
        assert ("sharded over 2 processes" in output) == (processes == "2")
        out = work / "out"
        outputs[processes] = tuple((out / name).read_text() for name in
                                   ("result.tsv", "infer-result.json", "mining-report.json"))
        assert sorted(p.name for p in out.iterdir()) == [
            "infer-result.json", "mining-report.json", "mining-report.png", "models", "monitor.txt", "result.tsv",
            "tensorboard", "ymir-executor-out.log"]
        log = (out / "ymir-executor-out.log").read_text()  # the console of every process, each line once
        assert log.count(" INFO ") == output.count(" INFO ") > 0
        assert log.count("sharded over 2 processes") == output.count("sharded over 2 processes")
        assert len(outputs[processes][0].splitlines()) == len(good) + len(bad)
    assert outputs["1"] == outputs["2"]


def wait_for_training(work, proc, deadline_s=HANG_LIMIT):
    """Rank 1's pid once training is under way (start-up is slow on a loaded machine: wait as long as it takes)."""
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc.poll() is None:
        monitor = (work / "out" / "monitor.txt").read_text().split("\t")
        if len(monitor) > 2 and float(monitor[2]) > 0.05:
            victim = rank_pid(proc.pid, 1)
            if victim is not None:
                return victim
        time.sleep(0.5)
    raise AssertionError("training never got under way")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_main_process_ends_every_rank(tmp_path, sig):
    """SIGTERM (YMIR's cancel is docker's SIGKILL of the whole container, but a supervisor may send SIGTERM) or
    SIGKILL to the executor: torchrun and the ranks end (the whole group, not only the executor), and monitor.txt
    stays in state 4."""
    work = ddp_workdir(tmp_path, epochs=200)
    proc = start(work)
    wait_for_training(work, proc)
    family = descendants(proc.pid)
    assert len(family) >= 3  # torchrun and two ranks at least
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=EXIT_LIMIT)
    left = wait_until_gone(family)
    assert not left, f"still running {EXIT_LIMIT} s after the executor was stopped: {left}"
    fields = (work / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    if sig == signal.SIGTERM:  # the executor itself reports; a SIGKILLed one cannot, rank 0 may or may not
        assert proc.returncode != 0 and fields[2:4] == ["1.0000", "4"], (fields, output[-2000:])
        assert "stopped by signal" in output.strip().splitlines()[-1]
    assert (work / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")[2:4] == fields[2:4]
