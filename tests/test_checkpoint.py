"""Checkpoints: official files read without the original code and without running anything from the file."""
import pickle
import subprocess
import sys

import pytest
import torch

from models.yolo import DetectionModel
from tests.helpers import HANG_LIMIT, REPO, WritesAFile, load_plain, load_trusted, oracle
from utils.checkpoint import (
    CheckpointError,
    build_model,
    read_checkpoint,
    save_checkpoint,
    transfer_weights,
    yolov5_layout_model,
)

FIXTURES = REPO / "tests" / "fixtures"
PARITY_SCRIPT = """
import sys, torch
try:
    import yolov5  # noqa: F401
    raise SystemExit("the original YOLOv5 is importable here; this check needs a process without it")
except ImportError:
    pass
sys.path.insert(0, {repo!r})
from tests.helpers import load_plain
from utils.checkpoint import build_model, read_checkpoint
ckpt = read_checkpoint({ckpt!r})
assert ckpt.source == "yolov5" and ckpt.names == ["class0", "class1", "class2"], (ckpt.source, ckpt.names)
model = build_model(ckpt)
io = load_plain({io!r})
with torch.no_grad():
    decoded, levels = model(io["input"])
# relative to 1 + |value|: decoded boxes reach ~900 px, where one float32 step is 6e-5
worst = max(((a - b).abs() / (1 + b.abs())).max().item()
            for a, b in zip([decoded, *levels], [io["decoded"], *io["levels"]]))
assert not any(name.startswith(("models.", "yolov5")) and name != "models" and "yolo" in name and
               not getattr(sys.modules[name], "__file__", "").startswith({repo!r}) for name in sys.modules)
print(worst)
"""


@pytest.mark.parametrize("cfg", [pytest.param("yolov5s", marks=pytest.mark.slow), "yolov5n6"])
def test_official_checkpoint_gives_the_originals_outputs(tmp_path, cfg):
    ckpt, io = tmp_path / "official.pt", tmp_path / "io.pt"
    oracle("checkpoint", cfg, 3, ckpt, io, 7, 128)
    script = PARITY_SCRIPT.format(repo=str(REPO), ckpt=str(ckpt), io=str(io))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=HANG_LIMIT, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip()) <= 1e-4


class EvalsCode:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    bomb = WritesAFile(marker) if payload == "system" else EvalsCode()
    torch.save({"model": bomb, "epoch": -1}, str(path))
    with pytest.raises(CheckpointError, match="refused") as info:
        read_checkpoint(path)
    assert ("posix.system" in str(info.value) or "os.system" in str(info.value)) if payload == "system" else \
        "eval" in str(info.value)
    assert not marker.exists()


def test_plain_pickle_file_is_refused_too(tmp_path):
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as f:
        pickle.dump({"model": WritesAFile(tmp_path / "pwned")}, f, protocol=2)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_unreadable_files(tmp_path, content):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_our_checkpoint_has_yolov5s_layout_and_round_trips(tmp_path):
    torch.manual_seed(1)
    model = DetectionModel("yolov5n", nc=2, activation="LeakyReLU")
    path = tmp_path / "ours.pt"
    save_checkpoint(path, model, ["cat", "dog"], epoch=3, meta={"mAP50": 0.5}, opt={"epochs": 3},
                    best_fitness=0.4)
    raw = load_trusted(path)  # our classes are importable here
    assert set(raw) == {"epoch", "best_fitness", "model", "ema", "updates", "optimizer", "opt", "git", "date",
                        "ymir"}
    assert (raw["epoch"], raw["best_fitness"], raw["ema"], raw["optimizer"], raw["opt"]) == (3, 0.4, None, None,
                                                                                           {"epochs": 3})
    pickled = raw["model"]
    assert type(pickled) is DetectionModel and not pickled.training and pickled.names == {0: "cat", 1: "dog"}
    assert pickled.__dict__["nc"] == 2 and all(not p.requires_grad for p in pickled.parameters())
    assert all(t.dtype in (torch.float16, torch.int64) for t in pickled.state_dict().values())
    assert model.training and next(model.parameters()).dtype == torch.float32  # the model written is untouched
    ckpt = read_checkpoint(path)
    assert (ckpt.names, ckpt.activation, ckpt.epoch, ckpt.meta) == (["cat", "dog"], "LeakyReLU", 3, {"mAP50": 0.5})
    rebuilt = build_model(ckpt)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, _ = model.half().float().eval()(x)
        got, _ = rebuilt(x)
    assert (expected - got).abs().max() < 1e-5


def test_a_model_trained_channels_last_is_saved_in_the_standard_memory_format(tmp_path):
    """The trainer runs channels-last; YOLOv5's attempt_load fuses with weight.view(out, -1), which needs the
    standard layout in the file. The model being trained keeps its own format."""
    model = DetectionModel("yolov5n", nc=2).to(memory_format=torch.channels_last)
    assert not model.model[1].conv.weight.is_contiguous()
    path = tmp_path / "ours.pt"
    save_checkpoint(path, model, ["cat", "dog"])
    pickled = load_trusted(path)["model"]
    assert all(t.is_contiguous() for t in pickled.state_dict().values())
    conv = pickled.model[1].conv
    conv.weight.clone().view(conv.out_channels, -1)  # what fuse_conv_and_bn does first
    assert not model.model[1].conv.weight.is_contiguous()


def test_a_checkpoint_of_the_earlier_plain_format_still_loads():
    """format_version 1 (a plain dict with a state_dict), as YMIR model stores hold it: fixture written by that
    code, with the outputs its weights gave."""
    ckpt = read_checkpoint(FIXTURES / "ymir-v1-plain-dict.pt")
    assert (ckpt.names, ckpt.epoch, ckpt.meta["img_size"]) == (["cat", "dog"], 7, 64)
    io = load_plain(FIXTURES / "ymir-v1-plain-dict-io.pt")
    with torch.no_grad():
        decoded, _ = build_model(ckpt)(io["input"])
    assert ((decoded - io["decoded"]).abs() / (1 + io["decoded"].abs())).max() < 1e-4


def test_a_global_hidden_in_our_checkpoint_is_refused_and_nothing_runs(tmp_path):
    path = tmp_path / "ours.pt"
    save_checkpoint(path, DetectionModel("yolov5n", nc=2), ["cat", "dog"])
    raw = load_trusted(path)
    proof = tmp_path / "ran"
    raw["ymir"]["meta"]["note"] = WritesAFile(proof)
    torch.save(raw, str(path))
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not proof.exists()


def test_transfer_to_another_class_count_keeps_matching_tensors():
    source = DetectionModel("yolov5n", nc=80)
    target = DetectionModel("yolov5n", nc=3)
    copied, total = transfer_weights(target, source.state_dict())
    # everything but the three class-dependent head convs (weight + bias) and the anchors
    assert total - copied == 3 * 2 + 1
    assert torch.equal(target.state_dict()["model.0.conv.weight"], source.state_dict()["model.0.conv.weight"])


def test_class_names_in_another_order_than_the_models_are_used_and_warned_about(caplog):
    from utils.checkpoint import Checkpoint
    from ymir.errors import ModelError
    from ymir.weights import resolve_class_names

    ckpt = Checkpoint(state_dict={}, yaml={"nc": 2}, names=["cat", "dog"])
    assert resolve_class_names(["Cat", "dog"], ckpt) == ["Cat", "dog"] and "another order" not in caplog.text
    assert resolve_class_names(["dog", "cat"], ckpt) == ["dog", "cat"]
    assert "name the model's classes in another order than it was trained with (['cat', 'dog'])" in caplog.text
    assert resolve_class_names([], ckpt) == ["cat", "dog"]
    with pytest.raises(ModelError, match=r"predicts 2 classes \['cat', 'dog'\] but config class_names has 1"):
        resolve_class_names(["cat"], ckpt)


def test_a_misspelt_class_name_is_warned_about_with_both_spellings_and_no_name_in_common_is_refused(caplog):
    from utils.checkpoint import Checkpoint
    from ymir.errors import ModelError
    from ymir.weights import resolve_class_names

    ckpt = Checkpoint(state_dict={}, yaml={"nc": 3}, names=["ball", "bat", "glove"])
    assert resolve_class_names(["bal", "bat", "glove"], ckpt) == ["bal", "bat", "glove"]
    assert "differ from the model's in 1 place(s): 'bal' (model: 'ball')" in caplog.text
    with pytest.raises(ModelError, match=r"\['cat', 'dog', 'cow'\] share no name with .* \['ball', 'bat', 'glove'\]"):
        resolve_class_names(["cat", "dog", "cow"], ckpt)
    for placeholders in (["0", "1"], ["class0", "class1"]):  # files without names, ours and YOLOv5's
        unnamed = Checkpoint(state_dict={}, yaml={"nc": 2}, names=placeholders)
        assert resolve_class_names(["cat", "dog"], unnamed) == ["cat", "dog"]


def test_a_module_tree_that_loops_is_a_damaged_checkpoint_not_a_hang(tmp_path):
    """A module whose child is itself (any pickle can hold a cycle), in our layout and in the official one."""
    from models.common import Conv

    for layout in ("ymir", "official"):
        node = Conv(3, 8)
        node._modules["again"] = node
        node.yaml = {"nc": 1}
        raw = {"model": node, "ymir": {"format": "ymir-yolov5", "yaml": {"nc": 1}, "names": ["a"]}} \
            if layout == "ymir" else {"model": node}
        path = tmp_path / f"{layout}.pt"
        torch.save(raw, str(path))
        with pytest.raises(CheckpointError, match="damaged checkpoint|architecture is refused"):
            read_checkpoint(path)


def test_the_nesting_check_follows_the_unpicklers_own_rules():
    """A POP right after MARK removes the mark (as the unpickler does); a container changed after it was memoised
    keeps its new depth; neither trick hides a deep tuple. A short stack is a malformed pickle."""
    import io

    from utils import restricted_pickle

    pop_mark = b"\x80\x02}N" + (b"\x85" * 900 + b"N(00N\x86") * 1200 + b"Ns."
    with pytest.raises(restricted_pickle.UnsafePickleError, match="nested more than 1000 deep"):
        restricted_pickle.check_structure(io.BytesIO(pop_mark))
    # a list memoised when empty, then given a 500-deep list, dropped, fetched from the memo and wrapped 600 deep
    memo_mutation = b"\x80\x02]q\x00" + b"]" * 500 + b"a" * 500 + b"0h\x00" + b"\x85" * 600 + b"."
    with pytest.raises(restricted_pickle.UnsafePickleError, match="nested more than 1000 deep"):
        restricted_pickle.check_structure(io.BytesIO(memo_mutation))
    with pytest.raises(pickle.UnpicklingError, match="malformed"):
        restricted_pickle.check_structure(io.BytesIO(b"\x80\x02a."))  # APPEND on an empty stack


@pytest.mark.parametrize("layer, change, needle", [
    (2, lambda args: args + [True, 1, 2000.0], "out of bounds"),  # C3's hidden-channel factor e
    (0, lambda args: [args[0], 300, 2, 2], "out of bounds"),  # a 300 x 300 kernel
    (24, lambda args: ["x", "anchors"], "the Detect head's classes"),
    (24, lambda args: ["nc", 3.5], "anchors = 3.5"),
    (0, lambda args: [args[0], "-" * 5000 + "1", *args[2:]], "out of bounds"),  # recurses when parsed
    (0, lambda args: ["-" * 5000 + "1", *args[1:]], "a number of channels"),
])
def test_every_argument_of_a_recorded_architecture_is_bounded(tmp_path, layer, change, needle):
    model = DetectionModel("yolov5n", nc=2)
    path = tmp_path / "crafted.pt"
    save_checkpoint(path, model, ["a", "b"])
    raw = load_trusted(path)
    arch = raw["ymir"]["yaml"]
    entry = (arch["backbone"] + arch["head"])[layer]
    entry[3] = change(list(entry[3]))
    torch.save(raw, str(path))
    with pytest.raises(CheckpointError, match=needle):
        read_checkpoint(path)


def test_weights_that_are_broadcast_views_or_layers_that_do_not_fit_are_refused(tmp_path):
    model = DetectionModel("yolov5n", nc=2)
    path = tmp_path / "view.pt"
    save_checkpoint(path, model, ["a", "b"])
    raw = load_trusted(path)
    raw["model"].model[0].conv.weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float16).expand(
        16, 3, 6, 6), requires_grad=False)  # a few bytes in the file, any size once copied
    torch.save(raw, str(path))
    with pytest.raises(CheckpointError, match="broadcast view"):
        read_checkpoint(path)
    save_checkpoint(path, model, ["a", "b"])
    raw = load_trusted(path)
    raw["ymir"]["yaml"]["head"][1][2] = "nn.Upsample"
    raw["ymir"]["yaml"]["head"][1][3] = [None, 3, "nearest"]  # sizes that Concat cannot join
    torch.save(raw, str(path))
    with pytest.raises(CheckpointError, match="cannot be built|do not fit"):
        build_model(read_checkpoint(path))


def test_an_official_files_class_names_are_read_as_text(tmp_path):
    """YOLOv5 keeps names as its data YAML parsed them: numbers and booleans are names too."""
    model = DetectionModel("yolov5n", nc=3)
    path = tmp_path / "official.pt"
    portable = yolov5_layout_model(model, ["a", "b", "c"])
    portable.names = {0: 0, 1: 1, 2: True}
    torch.save({"model": portable, "epoch": -1, "opt": {"imgsz": [320, 320]}}, str(path))
    ckpt = read_checkpoint(path)
    assert ckpt.names == ["0", "1", "True"] and ckpt.meta["img_size"] == 320
