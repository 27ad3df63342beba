"""The topology a cluster scheduler's environment describes (ymir.nodes), and the executor's words for a bad one."""
import pytest

from tests.helpers import run_start
from tests.test_start import assert_failed
from ymir.errors import CONFIG_ERROR, ConfigError
from ymir.local.demo import make_workdir
from ymir.nodes import NodeGroup, leave_rank_variables, read_node_group


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
    assert nodes.torchrun_arguments() == (f"--nnodes={expected[0]}", f"--node_rank={expected[1]}",
                                          f"--master_addr={expected[2]}", f"--master_port={expected[3]}")


def test_a_one_node_job_needs_no_address():
    assert read_node_group({"WORLD_SIZE": "1", "RANK": "0"}).nnodes == 1
    assert read_node_group({"SLURM_NNODES": "1", "SLURM_NODEID": "0"}).problem == ""


@pytest.mark.parametrize("environ, words", [
    ({"PET_NNODES": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "this node's rank is not set"),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     "this node's rank is 2, outside 0..1"),
    ({"PET_NNODES": "two", "PET_NODE_RANK": "0"}, "the number of nodes is 'two', not a whole number"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "0", "MASTER_PORT": "1"}, "the first node's address (MASTER_ADDR) is ''"),
    ({"SLURM_NNODES": "2", "SLURM_NODEID": "0", "MASTER_ADDR": "h"}, "the first node's port (MASTER_PORT) is not set"),
    ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "70000"}, "outside 1..65535"),
    ({"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_RDZV_ENDPOINT": "head"}, "'head' is not host:port"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "start.py was started by torchrun"),
])
def test_a_bad_topology_is_a_config_error_in_one_line(environ, words):
    nodes = read_node_group(environ)
    assert words in nodes.problem and "\n" not in nodes.problem
    assert nodes.nnodes == 1 and nodes.is_first  # the failure is reported where a one-node run reports it
    with pytest.raises(ConfigError, match="torchrun|multi-node training"):
        nodes.check()
    NodeGroup().check()  # a good one passes


def test_the_executors_own_process_sheds_the_schedulers_rank_variables():
    environ = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "5", "PATH": "/bin"}
    assert leave_rank_variables(environ) == {"WORLD_SIZE": "2", "RANK": "1"}
    assert environ == {"MASTER_ADDR": "h", "MASTER_PORT": "5", "PATH": "/bin"}


def test_a_node_without_its_rank_fails_the_task_as_a_config_error(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    result = run_start(work, extra_env={"PET_NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    assert_failed(result, CONFIG_ERROR, "multi-node training (PET_NNODES/PET_NODE_RANK): 2 nodes, but this node's "
                                        "rank is not set")
