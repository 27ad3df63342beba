"""The topology a cluster scheduler's environment describes (ymir.nodes), and the executor's words for a bad one."""
import pytest
import torch

from tests.helpers import run_start
from tests.test_start import assert_failed
from ymir.devices import cpu_reason
from ymir.errors import CONFIG_ERROR, ConfigError
from ymir.launch import scheduler_processes_differ, torchrun_command
from ymir.local.demo import make_workdir
from ymir.nodes import ONE_NODE, NodeGroup, leave_rank_variables, read_node_group


def test_no_scheduler_variables_mean_one_node():
    nodes = read_node_group({"PATH": "/usr/bin", "MASTER_ADDR": "10.0.0.1"})
    assert (nodes.nnodes, nodes.node_rank, nodes.is_first, nodes.problem) == (1, 0, True, "")


@pytest.mark.parametrize("environ, expected", [
    # torchrun's own variables (Kubeflow PyTorchJob with nprocPerNode), its own address
    ({"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "head", "PET_MASTER_PORT": "29500",
      "MASTER_ADDR": "elsewhere", "MASTER_PORT": "1"}, (2, 1, "head", 29500, "PET_NNODES/PET_NODE_RANK")),
    # ... or a rendezvous endpoint, IPv6 in brackets
    ({"PET_NNODES": "3", "PET_NODE_RANK": "0", "PET_RDZV_ENDPOINT": "[fd00::1]:23456"},
     (3, 0, "fd00::1", 23456, "PET_NNODES/PET_NODE_RANK")),
    # Slurm, with the job script's MASTER_ADDR / MASTER_PORT; its WORLD_SIZE is not read
    ({"SLURM_NNODES": "4", "SLURM_NODEID": "3", "MASTER_ADDR": "n01", "MASTER_PORT": "6000", "WORLD_SIZE": "9"},
     (4, 3, "n01", 6000, "SLURM_NNODES/SLURM_NODEID")),
    # one process per pod: WORLD_SIZE pods
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"},
     (2, 0, "job-master-0", 23456, "WORLD_SIZE/RANK")),
])
def test_each_schedulers_variables(environ, expected):
    nodes = read_node_group(environ)
    assert nodes.problem == ""
    assert (nodes.nnodes, nodes.node_rank, nodes.master_addr, nodes.master_port, nodes.source) == expected
    assert nodes.is_first == (expected[1] == 0)
    assert nodes.torchrun_arguments() == ("--rdzv_backend=static", f"--nnodes={expected[0]}",
                                          f"--node_rank={expected[1]}", f"--master_addr={expected[2]}",
                                          f"--master_port={expected[3]}")


def test_a_one_node_job_needs_no_address():
    assert read_node_group({"WORLD_SIZE": "1", "RANK": "0"}).nnodes == 1
    assert read_node_group({"SLURM_NNODES": "1", "SLURM_NODEID": "0"}).problem == ""


@pytest.mark.parametrize("environ, words, first", [
    ({"PET_NNODES": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "this node's rank (PET_NODE_RANK) is not set", True),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "PET_NODE_RANK is 2, outside 0..1", False),
    ({"PET_NNODES": "two", "PET_NODE_RANK": "0"}, "PET_NNODES is 'two', not a whole number", True),
    ({"PET_NNODES": "1:3", "PET_NODE_RANK": "0"}, "an elastic min:max range is not supported", True),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "1_0", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "PET_NODE_RANK is '1_0', not a whole number", True),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "0", "MASTER_PORT": "1"}, "the first node's address (MASTER_ADDR) is ''",
     True),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "0", "MASTER_ADDR": "h"}, "the first node's port (MASTER_PORT) is not set",
     True),
    # srun -n4 on one node, or 8 tasks per node: several executors per node
    ({"SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NTASKS": "4"}, "4 tasks on 1 node(s) (SLURM_NTASKS)", True),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_NTASKS": "16", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "16 tasks on 2 node(s)", False),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "70000"},
     "MASTER_PORT is 70000, outside 1..65535", False),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "h:29500", "MASTER_PORT": "1"},
     "the first node's address (MASTER_ADDR) is 'h:29500'", True),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_RDZV_ENDPOINT": "head"},
     "PET_RDZV_ENDPOINT is 'head', not host:port", False),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "0", "PET_RDZV_ENDPOINT": "[fd00::1]"},
     "PET_RDZV_ENDPOINT is '[fd00::1]'", True),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "LOCAL_RANK is set (torchrun or a launch script", True),
])
def test_a_bad_topology_is_a_config_error_in_one_line(environ, words, first):
    """A node whose own rank reads as another than 0 reports in its log alone: /out is the first node's."""
    nodes = read_node_group(environ)
    assert words in nodes.problem and "\n" not in nodes.problem
    assert nodes.nnodes == 1 and nodes.is_first == first
    with pytest.raises(ConfigError, match="LOCAL_RANK|multi-node training"):
        nodes.check()
    NodeGroup().check()  # a good one passes


def test_slurm_with_one_task_per_node_is_read():
    nodes = read_node_group({"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_NTASKS": "2", "MASTER_ADDR": "n1",
                             "MASTER_PORT": "6000"})
    assert (nodes.problem, nodes.nnodes, nodes.node_rank) == ("", 2, 1)


def test_torchrun_gets_every_rendezvous_setting_and_none_of_the_schedulers_pet_variables(tmp_path):
    """torchrun takes a PET_* variable as the default of each setting not given: a c10d backend (which ignores the
    node rank), a standalone rendezvous or redirected output must not come in through them."""
    environ = {"PET_RDZV_BACKEND": "c10d", "PET_STANDALONE": "1", "PET_REDIRECTS": "3", "PET_NNODES": "2",
               "PET_NODE_RANK": "1", "MASTER_ADDR": "fd00::1", "MASTER_PORT": "29500", "PATH": "/bin"}
    nodes = read_node_group(environ)
    command, env = torchrun_command(nodes, 2, tmp_path / "in", tmp_path / "out", environ)
    assert not [k for k in env if k.startswith("PET_")] and env["PATH"] == "/bin"
    assert command[3:9] == ["--nproc_per_node=2", "--rdzv_backend=static", "--nnodes=2", "--node_rank=1",
                            "--master_addr=fd00::1", "--master_port=29500"]
    assert nodes.describe() == "node 1 of 2 (PET_NNODES/PET_NODE_RANK), rendezvous at [fd00::1]:29500"
    one, env = torchrun_command(ONE_NODE, 2, tmp_path / "in", tmp_path / "out", {"PET_RDZV_BACKEND": "c10d"})
    assert one[4:8] == ["--rdzv_backend=static", "--nnodes=1", "--node_rank=0", "--master_addr=127.0.0.1"]
    assert "PET_RDZV_BACKEND" not in env


def test_a_scheduler_planning_other_processes_per_node_is_warned():
    assert scheduler_processes_differ({}, 2) is None
    assert scheduler_processes_differ({"PET_NPROC_PER_NODE": "2"}, 2) is None
    warning = scheduler_processes_differ({"PET_NPROC_PER_NODE": "8"}, 2)
    assert "'8'" in warning and "starts 2 training process(es)" in warning


def test_the_cpu_line_says_why(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert "is a CPU-only build" in cpu_reason()
    monkeypatch.setattr(torch.version, "hip", "6.4.1", raising=False)  # a ROCm build answers torch.cuda too
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "is built with ROCm 6.4.1 but CUDA is not available here" in cpu_reason()
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "is built with CUDA 12.8 but CUDA is not available here" in cpu_reason()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cpu_reason() == "running on the CPU: config gpu_id is empty, although CUDA sees 2 GPU(s)"


def test_the_executors_own_process_sheds_the_schedulers_rank_variables():
    environ = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "5", "PATH": "/bin"}
    assert leave_rank_variables(environ) == {"WORLD_SIZE": "2", "RANK": "1"}
    assert environ == {"MASTER_ADDR": "h", "MASTER_PORT": "5", "PATH": "/bin"}


def test_a_node_without_its_rank_fails_the_task_as_a_config_error(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    result = run_start(work, extra_env={"PET_NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert_failed(result, CONFIG_ERROR, "multi-node training (PET_NNODES/PET_NODE_RANK): 2 nodes, but this node's "
                                        "rank (PET_NODE_RANK) is not set")
