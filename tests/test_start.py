"""start.py end to end: bad input ends with monitor state 4, the right code, a clear last line, exit != 0,
/in byte-identical (checked by run_start) and no child process left."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.helpers import HANG_LIMIT, edit_yaml, run_start, ymir_cmd
from ymir.errors import CONFIG_ERROR, DATASET_ERROR
from ymir.local.demo import make_workdir


def assert_failed(result, code, *needles):
    assert result.returncode != 0
    fields = result.monitor_fields
    assert fields[2:5] == ["1.0000", "4", str(code)], result.monitor
    for needle in needles:
        assert needle in fields[5], fields[5]
        assert needle in result.last_lines[-1], result.output[-2000:]
    assert result.last_lines[0] == f"ymir-yolov5 failed with error code {code}:"


@pytest.mark.parametrize("changes,needles", [
    ({"img_size": 0}, ["'img_size'", "0", "a positive number of pixels up to 8192"]),
    ({"model": "yolov5z"}, ["'model'", "'yolov5z'", "yolov5n"]),
    ({"epochs": "many"}, ["'epochs'", "'many'"]),
    ({"class_names": None}, ["'class_names'"]),
])
def test_bad_training_config(tmp_path, changes, needles):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    edit_yaml(work / "in" / "config.yaml", **changes)
    assert_failed(run_start(work), CONFIG_ERROR, *needles)


def test_unknown_mining_algorithm(tmp_path):
    work = make_workdir(tmp_path, "mining", num_candidates=2)
    edit_yaml(work / "in" / "config.yaml", mining_algorithm="coreset")
    assert_failed(run_start(work), CONFIG_ERROR, "'mining_algorithm'", "'coreset'", "random, entropy, aldd, cald")


def test_missing_env_yaml(tmp_path):
    work = make_workdir(tmp_path, "infer", num_candidates=1)
    (work / "in" / "env.yaml").unlink()
    assert_failed(run_start(work), CONFIG_ERROR, "env.yaml not found")


def test_config_yaml_that_is_not_a_mapping(tmp_path):
    work = make_workdir(tmp_path, "infer", num_candidates=1)
    (work / "in" / "config.yaml").write_text("- just\n- a list\n")
    assert_failed(run_start(work), CONFIG_ERROR, "must be a YAML mapping")


def test_training_split_without_usable_images_is_a_dataset_error(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=3, num_val=2)
    for line in (work / "in" / "train-index.tsv").read_text().splitlines():
        image = work / "in" / line.split("\t")[0][len("/in/"):]
        image.write_bytes(b"")
    result = run_start(work)
    assert_failed(result, DATASET_ERROR, "the train split has no usable image")
    assert "skipped image reasons: not a readable image x3" in result.output


def test_training_labels_that_all_miss_the_class_names_are_a_dataset_error(tmp_path):
    """Every box dropped (annotations of other classes): nothing to learn, said before any epoch runs."""
    work = make_workdir(tmp_path, "training", num_train=3, num_val=2)
    edit_yaml(work / "in" / "config.yaml", class_names=["cat"])
    for line in (work / "in" / "train-index.tsv").read_text().splitlines():
        (work / "in" / line.split("\t")[1][len("/in/"):]).write_text("1, 5, 5, 40, 40\n")  # class 1 of 1 name
    result = run_start(work)
    assert_failed(result, DATASET_ERROR, "none of the 3 training images holds a box of the classes ['cat']")
    assert "check class_names and export_format against the annotations" in result.output
    assert "epoch 1/" not in result.output


def test_failure_monitor_is_read_by_the_platform(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    edit_yaml(work / "in" / "config.yaml", img_size=-1)
    run_start(work)
    parsed = ymir_cmd("2.3.0", "monitor", work / "out" / "monitor.txt")
    assert parsed["ok"] and parsed["state"] == 4 and parsed["state_code"] == CONFIG_ERROR
    assert "img_size" in parsed["state_message"]


def test_broken_image_costs_that_image_and_training_goes_on(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=4, num_val=2, config={"epochs": 1, "img_size": 64})
    first_image = (work / "in" / "train-index.tsv").read_text().splitlines()[0].split("\t")[0]
    (work / "in" / first_image[len("/in/"):]).write_bytes(b"not a jpeg")
    result = run_start(work)
    assert result.returncode == 0, result.output[-2000:]
    assert "3 images read" in result.output and "skipped image reasons: not a readable image x1" in result.output
    assert result.monitor_fields[2:4] == ["1.0000", "2"]
    assert (work / "out" / "models" / "result.yaml").is_file()


def test_no_child_process_outlives_a_failure(tmp_path):
    """A task that started a child and then failed leaves nothing behind."""
    script = tmp_path / "spawn_and_fail.py"
    pid_file = tmp_path / "child.pid"
    script.write_text(textwrap.dedent(f"""
        import subprocess, sys
        import ymir.tasks.predict as predict
        from ymir.app import main

        def boom(ctx):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            open({str(pid_file)!r}, "w").write(str(child.pid))
            raise RuntimeError("rank 1 died")

        predict.run_mining_and_inference = boom
        sys.exit(main(["--in", sys.argv[1], "--out", sys.argv[2]]))
    """))
    work = make_workdir(tmp_path / "w", "infer", num_candidates=1)
    proc = subprocess.run([sys.executable, str(script), str(work / "in"), str(work / "out")],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 1 and "rank 1 died" in proc.stdout.splitlines()[-1]
    assert not alive(int(pid_file.read_text()))
    monitor = (work / "out" / "monitor.txt").read_text().splitlines()[0].split("\t")
    assert monitor[3:5] == ["4", "0"]  # unknown failure: code 0, the platform's generic container error


def alive(pid):
    """Running, not merely a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_start_help_documents_the_folder_mapping():
    out = subprocess.run([sys.executable, "start.py", "--help"], stdout=subprocess.PIPE, text=True, check=True).stdout
    assert "--in" in out and "--out" in out


def test_template_yaml_files_are_flat_mappings():
    for name in ("training", "mining", "infer"):
        data = yaml.safe_load(Path(f"{name}-template.yaml").read_text())
        assert isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values())


def alias_chain(levels: int, fan_out: int = 10) -> str:
    """YAML lines defining a0..a{levels-1}: each a list of fan_out aliases of the one before (fan_out^levels values
    once expanded, in a few hundred bytes)."""
    lines = [f"a0: &a0 [{', '.join(['x'] * fan_out)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * fan_out)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("target", ["args_options", "my_unknown_key", "env"])
def test_yaml_alias_bombs_are_refused_cheaply(tmp_path, target):
    work = make_workdir(tmp_path / "w", "training", num_train=2, num_val=1)
    name = "env.yaml" if target == "env" else "config.yaml"
    path = work / "in" / name
    data = yaml.safe_load(path.read_text())
    data.pop("args_options", None)
    bomb = alias_chain(9) + f"{'args_options' if target == 'args_options' else 'bomb'}: *a8\n"
    path.write_text(bomb + yaml.safe_dump(data))
    assert len(path.read_bytes()) < 2000 + len(yaml.safe_dump(data))
    result = run_start(work, timeout=HANG_LIMIT)
    assert_failed(result, CONFIG_ERROR, name, "more than 100,000 values")
    assert len((work / "out" / "monitor.txt").read_bytes()) < 20_000


@pytest.fixture
def small_out(tmp_path):
    """A 2 MB filesystem for /out (tmpfs, mounted as root: YMIR's own machines and CI run as root)."""
    work = make_workdir(tmp_path / "w", "training", num_train=4, num_val=2, config={"epochs": 1, "img_size": 64})
    out = work / "out"
    monitor = (out / "monitor.txt").read_text()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(out)], capture_output=True,
                             text=True)
    assert mounted.returncode == 0, f"this test mounts a small tmpfs as root: {mounted.stderr}"
    (out / "monitor.txt").write_text(monitor)
    (out / "models").mkdir()
    (out / "tensorboard").mkdir()
    yield work
    subprocess.run(["umount", str(out)], check=True)


def test_a_full_out_ends_in_state_4_saying_so_and_leaves_no_partial_file(small_out):
    result = run_start(small_out)
    assert_failed(result, 0, "no space left on")
    out = small_out / "out"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], sorted(map(str, out.rglob("*")))


def test_the_monitor_is_rewritten_in_place_when_no_new_file_fits(tmp_path, monkeypatch):
    import ymir.monitor

    def disk_full(path, text):
        raise OSError(28, "No space left on device")

    monitor = ymir.monitor.Monitor(tmp_path / "monitor.txt", "t1", min_interval=0)
    monitor.progress(0.5)
    monkeypatch.setattr(ymir.monitor, "write_text_atomic", disk_full)
    monitor.error(300002, "the train split has no usable image", ["Traceback (most recent call last):", "x"])
    assert (tmp_path / "monitor.txt").read_text().split("\t")[2:] == ["1.0000", "4", "300002",
                                                                       "the train split has no usable image\n"]


def test_a_failing_tensorboard_writer_does_not_stop_training(tmp_path, caplog):
    from utils.metrics import DetectionMetrics
    from utils.trainer import EpochReport
    from ymir.training_report import TrainingReport

    report = TrainingReport(tmp_path, ["a"])
    report.writer.add_scalar = lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    epoch = EpochReport(0, [0.1] * 3, [0.01] * 3, DetectionMetrics(0.5, 0.5, 0.4, 0.2, 1, 1, 1), False, 1.0)
    report.epoch(epoch)
    report.epoch(epoch)  # after a failure the report stays quiet
    assert caplog.text.count("no longer written") == 1
    report.close()


def test_training_and_mining_in_one_env_trains_and_says_so(tmp_path):
    work = make_workdir(tmp_path / "w", "training", num_train=4, num_val=2,
                        config={"epochs": 1, "img_size": 64, "args_options": "--hyp warmup_epochs=0"})
    edit_yaml(work / "in" / "env.yaml", run_mining=True)
    result = run_start(work)
    assert result.returncode == 0, result.output[-2000:]
    assert "asks for training and for mining: a YMIR task does one or the other, so this run only trains" in \
        result.output
    # 4 images in batches of 8, one epoch, warmup off: no optimizer step at all, which the log says
    assert "the weights will not change" in result.output
    assert "lr_scheduler.step()" not in result.output  # torch's warning about it is expected, and silenced
    assert not (work / "out" / "result.tsv").exists()


def test_mining_where_no_candidate_can_be_read_is_a_dataset_error(tmp_path):
    work = make_workdir(tmp_path / "w", "mining", num_candidates=3)
    for line in (work / "in" / "candidate-index.tsv").read_text().split():
        (work / "in" / line[len("/in/"):]).write_bytes(b"")
    weights = work / "in" / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True)
    from models.yolo import DetectionModel
    from utils.checkpoint import save_checkpoint
    from ymir.local.demo import CLASS_NAMES

    save_checkpoint(weights, DetectionModel("yolov5n", nc=3), list(CLASS_NAMES))
    result = run_start(work)
    assert_failed(result, DATASET_ERROR, "none of the 3 candidate images could be read")
    assert not (work / "out" / "result.tsv").exists()


def test_a_misspelt_key_gets_a_did_you_mean_and_a_known_error_prints_no_traceback(tmp_path):
    work = make_workdir(tmp_path / "w", "training", num_train=2, num_val=1)
    edit_yaml(work / "in" / "config.yaml", epoch=3)
    (work / "in" / "train-index.tsv").write_text("")  # then a dataset error, diagnosed
    result = run_start(work)
    assert "WARNING" in result.output and "config key 'epoch' = 3 is not used by this task: did you mean 'epochs'?" \
        in result.output
    assert_failed(result, DATASET_ERROR, "train")
    assert "Traceback" not in result.output and "Traceback" not in result.monitor
    assert len(result.monitor.splitlines()) == 1  # the state line and its one-line message
    log = (work / "out" / "ymir-executor-out.log").read_text()  # by hand, the console is kept as YMIR keeps it
    assert log.splitlines()[-2:] == result.output.splitlines()[-2:]
    assert "did you mean 'epochs'?" in log and "Traceback" not in log


def test_an_unexpected_error_keeps_its_traceback(tmp_path):
    work = make_workdir(tmp_path / "w", "training", num_train=2, num_val=1)
    script = textwrap.dedent(f"""
        import sys
        import ymir.app
        def broken(ctx):
            raise ZeroDivisionError("a bug")
        ymir.app.run = broken
        sys.exit(ymir.app.main(["--in", {str(work / "in")!r}, "--out", {str(work / "out")!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode != 0 and "Traceback" in proc.stdout and "ZeroDivisionError: a bug" in proc.stdout
    monitor = (work / "out" / "monitor.txt").read_text()
    assert monitor.splitlines()[0].split("\t")[3:] == ["4", "0", "ZeroDivisionError: a bug"]
    assert "Traceback (most recent call last):" in monitor


def test_no_task_folder_outside_the_container_writes_nothing(tmp_path):
    missing = tmp_path / "nothing"
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "start.py"), "--in",
                           str(missing / "in"), "--out", str(missing / "out")], capture_output=True, text=True,
                          timeout=HANG_LIMIT)
    assert proc.returncode == 2 and "give a task folder with --in IN --out OUT" in proc.stdout
    assert not missing.exists()
