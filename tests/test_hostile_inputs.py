"""Inputs built to break the executor: each costs only itself (the image is skipped and reported) or fails the task
with state 4, the right code and a one-line message, quickly, in bounded memory, never by a signal."""
import io
import json
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
import torch

from models.yolo import DetectionModel
from tests.helpers import HANG_LIMIT, START, edit_yaml, load_trusted, make_read_only, run_start
from utils.boxes import letterbox_geometry
from utils.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from utils.data.images import ImageReadError, probe_image
from utils.data.letterbox import letterbox
from ymir.errors import CONFIG_ERROR, DATASET_ERROR, MODEL_ERROR
from ymir.local.demo import CLASS_NAMES, make_workdir
from ymir.local.task_folder import write_asset
from ymir.mining import UNREADABLE_SCORE

MEMORY_LIMIT_MB = 2048


def assert_failed_cleanly(result, code, *needles):
    """State 4 with `code` and a one-line message naming the needles; the console ends with the reason."""
    assert result.returncode > 0, (result.returncode, result.output[-2000:])  # an exit with an error, no signal
    fields = result.monitor_fields
    assert fields[2:5] == ["1.0000", "4", str(code)], result.monitor
    assert len(result.monitor.splitlines()[0].split("\t")) == 6
    for needle in needles:
        assert needle in fields[5], fields[5]
    assert result.last_lines[0] == f"ymir-yolov5 failed with error code {code}:", result.output[-2000:]


def run_measured(work):
    """start.py in a process of its own whose peak resident memory (of every process it waited for) is reported:
    (RunResult-like dict, peak MB)."""
    make_read_only(work / "in")
    script = (f"import resource, subprocess, sys\n"
              f"p = subprocess.run([sys.executable, {str(START)!r}, '--in', {str(work / 'in')!r}, '--out', "
              f"{str(work / 'out')!r}], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
              f"sys.stdout.write(p.stdout)\n"
              f"print('RC', p.returncode, 'PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HANG_LIMIT)
    *output, last = proc.stdout.strip().splitlines()
    _, rc, _, peak_kb = last.split()
    monitor = (work / "out" / "monitor.txt").read_text()

    class Result:
        returncode = int(rc)
        monitor_fields = monitor.splitlines()[0].split("\t")
        last_lines = output[-2:]

    Result.monitor, Result.output = monitor, "\n".join(output)
    return Result, int(peak_kb) / 1024


def add_model(work):
    weights = work / "in" / "models" / "best" / "best.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(weights, DetectionModel("yolov5n", nc=3), list(CLASS_NAMES))
    return weights


# ---- 1. a file name longer than the file system allows -----------------------------------------------------------

def test_a_path_the_file_system_refuses_is_that_images_failure(tmp_path):
    too_long = tmp_path / ("a" * 300 + ".jpg")
    with pytest.raises(ImageReadError, match="cannot open the file"):
        probe_image(too_long)
    with pytest.raises(ImageReadError):
        probe_image(tmp_path / "nul\0byte.jpg")


@pytest.mark.parametrize("task", ["mining+infer", "training"])
def test_a_name_over_255_bytes_in_an_index_costs_that_image(tmp_path, task):
    work = make_workdir(tmp_path / "w", task, num_candidates=4, num_train=6, num_val=2,
                        config={"epochs": 1, "img_size": 64, "mining_algorithm": "random"})
    index = work / "in" / ("candidate-index.tsv" if task != "training" else "train-index.tsv")
    lines = index.read_text().splitlines()
    long_path = "/in/assets/" + "b" * 300 + ".jpg"
    extra = long_path if task != "training" else f"{long_path}\t{lines[0].split(chr(9))[1]}"
    index.write_text("\n".join(lines + [extra]) + "\n")
    if task != "training":
        add_model(work)
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    assert "cannot open the file (File name too long)" in result.output
    if task != "training":
        ranked = [line.split("\t")[0] for line in (work / "out" / "result.tsv").read_text().splitlines()]
        assert ranked[-1] == long_path and len(ranked) == 5


# ---- 2. a very thin image ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 5000), (5000, 3), (20, 20000), (1_000_000, 2)])
def test_letterboxing_never_makes_a_side_of_zero_pixels(shape):
    _, (w, h), (dw, dh) = letterbox_geometry(shape, (640, 640))
    assert w >= 1 and h >= 1 and dw >= 0 and dh >= 0
    if shape[0] * shape[1] <= 20 * 20000:
        img, _, _ = letterbox(np.zeros((*shape, 3), np.uint8), 640)
        assert img.shape == (640, 640, 3)


def test_thin_images_among_the_candidates_are_predicted_like_any_other(tmp_path):
    work = make_workdir(tmp_path / "w", "mining+infer", num_candidates=3)
    add_model(work)
    thin = [write_asset(work / "in", cv2.imencode(".png", np.full(shape, 200, np.uint8))[1].tobytes(), "png")
            for shape in ((3, 5000, 3), (5000, 3, 3), (20, 20000, 3))]
    index = work / "in" / "candidate-index.tsv"
    index.write_text(index.read_text() + "\n".join(thin) + "\n")
    edit_yaml(work / "in" / "config.yaml", img_size=640)
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    scores = dict(line.split("\t") for line in (work / "out" / "result.tsv").read_text().splitlines())
    assert all(float(scores[p]) > UNREADABLE_SCORE for p in thin)  # scored, not skipped as unreadable
    detection = json.loads((work / "out" / "infer-result.json").read_text())["detection"]
    assert all(p.rsplit("/", 1)[1] in detection for p in thin)


# ---- 3. numbers at the edge of float ------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, key", [
    ({"mining_algorithm": "aldd", "class_distribution_scores": "1e308,1,1"}, "class_distribution_scores"),
    ({"batch_size_per_gpu": 10**9}, "batch_size_per_gpu"),
    ({"max_det": 10**12}, "max_det"),
    ({"num_workers_per_gpu": 100000}, "num_workers_per_gpu"),
])
def test_numbers_beyond_their_bounds_are_config_errors_before_any_work(tmp_path, changes, key):
    work = make_workdir(tmp_path / "w", "mining+infer", num_candidates=2, config=changes)
    result = run_start(work)
    assert_failed_cleanly(result, CONFIG_ERROR, f"'{key}'")
    assert "model weights" not in result.output  # refused before the model was even looked for


# ---- 4. to 6. crafted checkpoints ----------------------------------------------------------------------------------

def pickle_nested(depth: int) -> bytes:
    """{(((...),),): 1}: a dict keyed by a tuple nested `depth` deep, as pickle opcodes (pickle.dumps itself would
    recurse): PROTO 2, EMPTY_DICT, EMPTY_TUPLE, TUPLE1 x depth, BININT1 1, SETITEM, STOP."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def checkpoint_with_pickle(path, body: bytes) -> None:
    """torch's zip layout with `body` as its data.pkl."""
    buffer = io.BytesIO()
    torch.save({"a": 1}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            out.writestr(info.filename, body if info.filename.endswith("/data.pkl") else source.read(info.filename))


def test_a_pickle_nested_a_million_deep_is_refused_not_a_crash(tmp_path):
    deep = tmp_path / "deep.pt"
    checkpoint_with_pickle(deep, pickle_nested(1_000_000))
    # in a process of its own: a crash here would be a signal, not an exception
    proc = subprocess.run([sys.executable, "-c", "import sys\nfrom utils.checkpoint import read_checkpoint, "
                           "CheckpointError\ntry:\n    read_checkpoint(sys.argv[1])\nexcept CheckpointError as e:\n"
                           "    print(e)", str(deep)], capture_output=True, text=True, timeout=HANG_LIMIT)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "nested more than 1000 deep" in proc.stdout
    shallow = tmp_path / "shallow.pt"
    checkpoint_with_pickle(shallow, pickle_nested(50))  # nests, but as little as real files do: not refused as deep
    with pytest.raises(CheckpointError, match="not a checkpoint|neither"):
        read_checkpoint(shallow)


def crafted_stage(work, edit):
    """A stage of ours in /in/models whose recorded payload `edit` changes."""
    weights = add_model(work)
    raw = load_trusted(weights)
    edit(raw)
    torch.save(raw, str(weights))
    return weights


def set_yaml(key, value):
    def edit(raw):
        raw["ymir"]["yaml"][key] = value
    return edit


def set_names(names):
    def edit(raw):
        raw["ymir"]["names"] = names
    return edit


@pytest.mark.parametrize("edit, needle", [
    ("deep", "nested more than 1000 deep"),
    (set_names(["a", None, "c"]), "class names must be 3 non-empty texts"),
    (set_names([1, 2, 3]), "class names must be 3 non-empty texts"),
    (set_names(["a", "b"]), "class names must be 3 non-empty texts"),
    (set_yaml("width_multiple", 40), "width_multiple = 40"),
    (set_yaml("depth_multiple", 1e6), "depth_multiple = 1000000.0"),
    (set_yaml("nc", 50_000_000), "nc = 50000000"),
    (set_yaml("nc", 7), "the architecture asks for 7 classes"),
    (set_yaml("anchors", [[10, 13] * 1000] * 3), "anchors"),
    (set_yaml("width_multiple", 0.5), "output channels"),
    (set_yaml("depth_multiple", 1.0), "bottlenecks"),
], ids=["deep-pickle", "name-None", "name-numbers", "too-few-names", "width-40", "depth-1e6", "nc-50M", "nc-other",
        "anchors-huge", "width-other", "depth-other"])
def test_a_crafted_checkpoint_is_a_model_error_in_bounded_time_and_memory(tmp_path, edit, needle):
    work = make_workdir(tmp_path / "w", "mining+infer", num_candidates=2)
    if edit == "deep":
        weights = work / "in" / "models" / "best" / "best.pt"
        weights.parent.mkdir(parents=True)
        checkpoint_with_pickle(weights, pickle_nested(1_000_000))
    else:
        crafted_stage(work, edit)
    result, peak_mb = run_measured(work)
    assert_failed_cleanly(result, MODEL_ERROR, needle)
    assert peak_mb < MEMORY_LIMIT_MB
    assert result.returncode == 1  # an exit, not a signal



# ---- the smaller ones ----------------------------------------------------------------------------------------------

def mining_work(tmp_path, **config):
    work = make_workdir(tmp_path / "w", "mining+infer", num_candidates=4, config=config)
    add_model(work)
    return work


def test_repeated_candidate_lines_are_scored_once_and_said_so(tmp_path):
    work = mining_work(tmp_path)
    index = work / "in" / "candidate-index.tsv"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines + lines[:2] + lines[:1]) + "\n")
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    ranked = [line.split("\t")[0] for line in (work / "out" / "result.tsv").read_text().splitlines()]
    assert sorted(ranked) == sorted(lines)
    assert "lists 2 image(s) more than once (3 repeated lines)" in result.output


def test_two_candidates_of_one_name_in_different_folders_are_refused_for_inference(tmp_path):
    work = mining_work(tmp_path)
    index = work / "in" / "candidate-index.tsv"
    lines = index.read_text().splitlines()
    first = work / "in" / lines[0][len("/in/"):]
    twin = work / "in" / "elsewhere" / first.name
    twin.parent.mkdir()
    twin.write_bytes((work / "in" / lines[1][len("/in/"):]).read_bytes())
    index.write_text("\n".join(lines + [f"/in/elsewhere/{first.name}"]) + "\n")
    result = run_start(work)
    assert_failed_cleanly(result, DATASET_ERROR, "shared by candidates in different folders", first.name)
    edit_yaml(work / "in" / "env.yaml", run_infer=False)  # mining alone writes whole paths: no clash
    assert run_start(work).returncode == 0


def test_a_byte_order_mark_and_crlf_line_ends_are_accepted_in_every_text_input(tmp_path):
    work = mining_work(tmp_path)
    for name in ("candidate-index.tsv", "env.yaml", "config.yaml"):
        path = work / "in" / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    ranked = [line.split("\t")[0] for line in (work / "out" / "result.tsv").read_text().splitlines()]
    assert len(ranked) == 4 and all(p.startswith("/in/assets/") for p in ranked)


def test_a_task_id_with_tabs_and_line_breaks_keeps_monitor_txt_one_line(tmp_path):
    work = mining_work(tmp_path, batch_size_per_gpu=10**9)  # fails: the state line with its code must parse
    edit_yaml(work / "in" / "env.yaml", task_id="evil\tid\nsecond line\r")
    result = run_start(work)
    first = result.monitor.splitlines()[0].split("\t")
    assert first[0] == "evil id second line " and first[2:5] == ["1.0000", "4", str(CONFIG_ERROR)]


def test_results_of_an_earlier_run_are_removed_before_this_one_writes(tmp_path):
    work = mining_work(tmp_path)
    out = work / "out"
    edit_yaml(work / "in" / "env.yaml", run_infer=False)
    (out / "infer-result.json").write_text('{"detection": {"stale.jpg": {"boxes": []}}}')
    (out / "models" / "old-stage").mkdir(parents=True)
    (out / "models" / "old-stage" / "old.pt").write_bytes(b"stale")
    (out / "models" / "result.yaml").write_text("model_stages:\n  old-stage: {files: [old.pt]}\n")
    (out / "notes.txt").write_text("not ours to remove")
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    assert not (out / "infer-result.json").exists() and not (out / "models" / "result.yaml").exists()
    assert not (out / "models" / "old-stage").exists() and (out / "notes.txt").exists()
    assert "removing the results of an earlier run" in result.output and (out / "result.tsv").exists()


def test_a_second_run_on_the_same_out_folder_fails_at_once_and_leaves_the_first_ones_monitor(tmp_path):
    import fcntl
    import os

    work = mining_work(tmp_path)
    monitor_before = (work / "out" / "monitor.txt").read_text()
    fd = os.open(work / "out", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a first run holds it
        result = run_start(work)
    finally:
        os.close(fd)
    assert result.returncode == 1
    assert "another ymir-yolov5 run is writing to" in result.output.strip().splitlines()[-1]
    assert (work / "out" / "monitor.txt").read_text() == monitor_before
    assert not (work / "out" / "result.tsv").exists()
    assert run_start(work).returncode == 0  # released with the first run


def test_an_index_that_is_a_device_is_refused_not_read_without_end(tmp_path):
    work = mining_work(tmp_path)
    edit_yaml(work / "in" / "env.yaml", input={**yaml_of(work / "in" / "env.yaml")["input"],
                                               "candidate_index_file": "/dev/zero"})
    result, peak_mb = run_measured(work)
    assert_failed_cleanly(result, DATASET_ERROR, "/dev/zero is not a regular file")
    assert peak_mb < MEMORY_LIMIT_MB


def yaml_of(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_float_tiffs_are_decoded(tmp_path):
    work = mining_work(tmp_path)
    rng = np.random.default_rng(0)
    grey = rng.random((48, 64)).astype(np.float32)  # one float sample per pixel, 0..1
    colour = (rng.random((48, 64, 3)) * 255).astype(np.float32)  # three per pixel, 0..255
    tiffs = [write_asset(work / "in", cv2.imencode(".tiff", img)[1].tobytes(), "tiff") for img in (grey, colour)]
    index = work / "in" / "candidate-index.tsv"
    index.write_text(index.read_text() + "\n".join(tiffs) + "\n")
    result = run_start(work)
    assert result.returncode == 0, result.output[-3000:]
    scores = dict(line.split("\t") for line in (work / "out" / "result.tsv").read_text().splitlines())
    assert all(float(scores[p]) > UNREADABLE_SCORE for p in tiffs)
    from utils.data.images import read_image

    decoded = read_image(work / "in" / tiffs[0][len("/in/"):])
    assert decoded.shape == (48, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded[:, :, 0].astype(int) - np.round(grey * 255)).max() <= 1


def test_stale_result_removal_never_leaves_the_models_folder(tmp_path):
    from ymir.out_folder import remove_stale_results
    from ymir.paths import OutputPaths

    output = OutputPaths.under(tmp_path / "out")
    (output.models_dir / "best").mkdir(parents=True)
    (output.root / "user-data").mkdir()
    (output.root / "user-data" / "keep.txt").write_text("mine")
    output.training_result_file.write_text("model_stages:\n  '..': {}\n  '.': {}\n  best: {}\n  /etc: {}\n")
    output.mining_report_file.write_text("{}")  # an earlier mining's report must not pass for this run's
    output.mining_report_picture.write_bytes(b"png")
    remove_stale_results(output)
    assert (output.root / "user-data" / "keep.txt").exists() and output.models_dir.is_dir()
    assert not (output.models_dir / "best").exists() and not output.training_result_file.exists()
    assert not output.mining_report_file.exists() and not output.mining_report_picture.exists()


def test_a_tiff_header_claiming_a_huge_image_is_refused_without_decoding(tmp_path):
    import struct

    # a classic little-endian TIFF whose one header says 100000 x 100000 float samples and holds almost nothing
    entries = [(256, 4, 1, 100000), (257, 4, 1, 100000), (258, 3, 1, 32), (339, 3, 1, 3), (277, 3, 1, 1)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    path = tmp_path / "huge.tiff"
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 64)
    with pytest.raises(ImageReadError, match="too large to decode safely"):
        probe_image(path)


def test_a_training_size_recorded_out_of_bounds_is_ignored():
    from ymir.tasks import prediction_image_size

    assert prediction_image_size(0, 10**6) == 640 and prediction_image_size(0, True) == 640
    assert prediction_image_size(0, 320) == 320 and prediction_image_size(512, 320) == 512
