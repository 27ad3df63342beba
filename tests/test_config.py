"""Config: template defaults overlaid by config.yaml, YMIR's loose types, clear errors naming the key."""
import dataclasses

import pytest
import yaml

from models.architecture import MODEL_NAMES
from utils.hyperparameters import SCRATCH_LOW
from utils.train_settings import TrainSettings, flags
from ymir.config import (
    InferConfig,
    MiningConfig,
    PlatformConfig,
    TrainingConfig,
    build_section,
    load_config,
    load_template,
    section_keys,
)
from ymir.env import load_env
from ymir.errors import CONFIG_ERROR, ConfigError
from ymir.local.demo import make_workdir
from ymir.paths import PathMapper


def load(workdir):
    mapper = PathMapper(workdir / "in", workdir / "out")
    env = load_env(mapper)
    return env, load_config(env, mapper)


def set_config(workdir, **values):
    path = workdir / "in" / "config.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(values)
    path.write_text(yaml.safe_dump(data))


def test_training_config_from_template_and_strings(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    set_config(work, epochs="3", save_best_only="False", sync_bn="1", img_size="320", batch_size_per_gpu=4.0,
               gpu_id="0,1", activation="relu")
    env, config = load(work)
    t = config.training
    assert (t.epochs, t.save_best_only, t.sync_bn, t.img_size, t.batch_size_per_gpu) == (3, False, True, 320, 4)
    assert t.activation == "ReLU"
    assert t.opset == 11 and t.args_options == "--exist-ok"  # from the template, not in config.yaml
    assert config.platform.gpu_ids == (0, 1) and config.platform.device_type == "cuda"
    assert config.platform.class_names == ("box", "disc", "triangle")
    assert config.platform.annotation_format == "ark"
    assert config.mining is None and config.infer is None


def test_empty_gpu_id_means_cpu(tmp_path):
    work = make_workdir(tmp_path, "infer", num_candidates=1)
    _, config = load(work)
    assert config.platform.gpu_ids == () and config.platform.device_type == "cpu"
    assert config.infer.conf_thres == 0.25 and config.infer.max_det == 1000


def test_mining_plus_infer_builds_both_from_the_mining_template(tmp_path):
    work = make_workdir(tmp_path, "mining+infer", num_candidates=1)
    set_config(work, conf_thres="0.3", class_distribution_scores="1.0, 0.5,2", mining_algorithm="CALD")
    _, config = load(work)
    assert config.mining.mining_algorithm == "cald"
    assert config.mining.class_distribution_scores == (1.0, 0.5, 2.0)
    assert config.mining.conf_thres == config.infer.conf_thres == 0.3


def test_img_size_is_rounded_by_the_model_alone(caplog):
    """The config checks the range; the model the task runs rounds the size up to its own step (32, or 64)."""
    from models.yolo import DetectionModel
    from ymir.tasks import fitted_image_size

    assert build_section(InferConfig, {"img_size": 600}).img_size == 600
    assert build_section(InferConfig, {"img_size": "640"}).img_size == 640
    assert fitted_image_size(DetectionModel("yolov5n", nc=1), 600) == 608
    assert "img_size 600 is not a multiple of the model's largest stride 32: using 608" in caplog.text
    assert fitted_image_size(DetectionModel("yolov5n6", nc=1), 600) == 640


def test_unknown_key_is_kept_and_logged(tmp_path, caplog):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    set_config(work, my_custom_knob=7, shm_size="16G", gpu_count=2)
    _, config = load(work)
    assert config.unknown == {"my_custom_knob": 7}
    assert "my_custom_knob" in caplog.text


@pytest.mark.parametrize("section,key,value,allowed", [
    (TrainingConfig, "img_size", 0, "a positive number of pixels up to 8192"),
    (TrainingConfig, "img_size", -64, "a positive number of pixels up to 8192"),
    (TrainingConfig, "img_size", "big", "not an integer"),
    (TrainingConfig, "model", "yolov9", "yolov5n, yolov5s"),
    (TrainingConfig, "epochs", 0, "from 1 to 100,000"),
    (TrainingConfig, "save_best_only", "maybe", "true/false"),
    (TrainingConfig, "batch_size_per_gpu", True, "not an integer"),
    (TrainingConfig, "activation", "Swishy", "SiLU"),
    (TrainingConfig, "opset", 7, "from 11 to 20"),
    (TrainingConfig, "args_options", "--hyp 'lr0=0.1", "cannot be split"),
    (TrainingConfig, "ymir_saved_file_patterns", "best.*,([", "bad regex"),
    (MiningConfig, "mining_algorithm", "coreset", "random, entropy, aldd, cald"),
    (MiningConfig, "class_distribution_scores", "1,x", "not a number"),
    (MiningConfig, "aldd_resolution", "pixel", "native, input"),
    (MiningConfig, "conf_thres", 1.5, "[0, 1]"),
    (MiningConfig, "cald_undetected_share", 1.2, "[0, 1]"),
    (InferConfig, "iou_thres", 0, "(0, 1]"),
    (InferConfig, "max_det", 0, "from 1 to 100,000"),
])
def test_bad_value_is_a_config_error_naming_key_value_and_allowed(section, key, value, allowed):
    with pytest.raises(ConfigError) as info:
        build_section(section, {key: value})
    assert info.value.code == CONFIG_ERROR
    message = info.value.message
    assert f"'{key}'" in message and repr(value) in message and allowed in message


def test_every_template_key_is_understood():
    platform_only = {"shm_size", "export_format"}
    assert set(load_template("training")) - platform_only == section_keys(TrainingConfig)
    assert set(load_template("mining")) - platform_only == section_keys(MiningConfig)
    assert set(load_template("infer")) - platform_only == section_keys(InferConfig)
    assert "settings" not in section_keys(TrainingConfig)  # derived from the keys, not a key of config.yaml
    assert load_template("training")["model"] in MODEL_NAMES


def test_each_template_value_is_its_sections_default():
    """The dataclasses own the defaults; the templates the platform shows users repeat them exactly. Not
    export_format: the template asks the platform for ark (`ark:raw`), while a config.yaml that names no format
    means what the platform exports then, det-voc."""
    for name, section in (("training", TrainingConfig), ("mining", MiningConfig), ("infer", InferConfig)):
        assert build_section(section, load_template(name)) == section().validate(), name
    assert (load_template("training")["export_format"], PlatformConfig().export_format) == ("ark:raw", "det-voc:raw")


@pytest.mark.parametrize("changes,needle", [
    ({"class_names": []}, "class_names"),
    ({"class_names": ["cat", "Cat"]}, "distinct"),
    ({"gpu_id": "0,a"}, "gpu_id"),
    ({"export_format": "yolo:raw"}, "export_format"),
    ({"export_format": "ark"}, "export_format"),
])
def test_bad_platform_keys(tmp_path, changes, needle):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    set_config(work, **changes)
    with pytest.raises(ConfigError, match=needle):
        load(work)


def test_missing_export_format_means_det_voc(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    data = yaml.safe_load((work / "in" / "config.yaml").read_text())
    del data["export_format"]
    (work / "in" / "config.yaml").write_text(yaml.safe_dump(data))
    _, config = load(work)
    assert config.platform.annotation_format == "voc"


def test_env_paths_are_mapped_onto_the_given_folders(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    env, _ = load(work)
    assert env.training_index_file == (work / "in" / "train-index.tsv").resolve()
    assert env.candidate_index_file is None
    assert env.output.monitor_file == (work / "out" / "monitor.txt").resolve()
    assert env.protocol_version == "1.1.0" and env.run_training and not env.run_mining


def test_env_asking_for_nothing_is_a_config_error(tmp_path):
    work = make_workdir(tmp_path, "infer", num_candidates=1)
    path = work / "in" / "env.yaml"
    data = yaml.safe_load(path.read_text())
    data["run_infer"] = "False"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="no task"):
        load(work)


@pytest.mark.parametrize("values,expected", [
    ({"activate": "ReLU"}, "ReLU"),  # the name in the reference executor's documentation
    ({"activate": "relu", "activation": "ReLU"}, "ReLU"),  # both, the same setting
    ({"activation": "LeakyReLU"}, "LeakyReLU"),
])
def test_activate_is_another_name_for_activation(tmp_path, caplog, values, expected):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    set_config(work, **values)
    _, config = load(work)
    assert config.training.activation == expected and "activate" not in config.unknown
    assert "not used by this task" not in caplog.text


def test_activate_and_activation_that_differ_are_a_config_error(tmp_path):
    work = make_workdir(tmp_path, "training", num_train=2, num_val=1)
    set_config(work, activate="ReLU", activation="SiLU")
    with pytest.raises(ConfigError, match="'activate' and 'activation' name the same setting but differ"):
        load(work)


def test_saved_file_patterns_never_drop_a_stage_s_weights(tmp_path):
    from utils.train_settings import TrainSettings
    from ymir.tasks.train import StageSaver

    for patterns, expected in (("(a+)+$", ["best.pt"]), ("onnx$", ["best.pt", "best.onnx"]),
                               ("", ["best.pt", "best.onnx"])):
        saver = StageSaver(tmp_path, TrainingConfig(model="yolov5n", ymir_saved_file_patterns=patterns).validate(),
                           ["a"], TrainSettings(model="yolov5n", img_size=64), [1])
        assert saver._keep(["best.pt", "best.onnx"]) == expected, patterns


def test_the_training_settings_are_made_once_from_the_keys_and_args_options():
    cfg = build_section(TrainingConfig, {"model": "yolov5n", "epochs": 7, "batch_size_per_gpu": 4,
                                         "args_options": "--cos-lr --hyp lr0=0.02 --freeze 3 --label-smoothing 0.1"})
    s = cfg.settings
    assert (s.model, s.epochs, s.batch_size, s.img_size, s.workers) == ("yolov5n", 7, 4, 640, 4)
    assert s.cos_lr and s.freeze == 3 and s.hyp["lr0"] == 0.02 and s.hyp["lrf"] == SCRATCH_LOW["lrf"]
    assert s.label_smoothing == 0.1 and s.training_hyp["label_smoothing"] == 0.1  # the loss reads it in hyp


# A value other than the default for every flag TrainSettings declares: a new flag without a line here fails below.
FLAG_EXAMPLES = {
    "hyp": ("--hyp lr0=0.02 fliplr=0", lambda hyp: hyp["lr0"] == 0.02 and hyp["fliplr"] == 0.0, "hyp"),
    "label_smoothing": ("--label-smoothing 0.1", 0.1, "label_smoothing"),
    "optimizer": ("--optimizer AdamW", "AdamW", "optimizer"),
    "cos_lr": ("--cos-lr", True, "cos_lr"),
    "multi_scale": ("--multi-scale", True, "multi_scale"),
    "single_cls": ("--single-cls", True, "single_cls"),
    "rect": ("--rect", True, "rect"),
    "cache": ("--cache", "ram", "cache"),
    "freeze": ("--freeze 10", 10, "freeze"),
    "patience": ("--patience 7", 7, "patience"),
    "autoanchor": ("--noautoanchor", False, "noautoanchor"),
    "seed": ("--seed 5", 5, "seed"),
    "image_weights": ("--image-weights", True, "image_weights"),
}


def test_every_flag_reaches_its_setting_and_the_checkpoints_opt():
    """One definition per flag (utils/train_settings.py): the parser, the error's list of accepted flags, the
    settings and the checkpoint's `opt` (under YOLOv5's names) all follow it."""
    declared = dict(flags())
    assert set(FLAG_EXAMPLES) == set(declared)
    default = build_section(TrainingConfig, {"model": "yolov5n"}).settings
    assert default == TrainSettings(model="yolov5n", workers=TrainingConfig.num_workers_per_gpu)
    for name, (text, expected, opt_name) in FLAG_EXAMPLES.items():
        settings = build_section(TrainingConfig, {"model": "yolov5n", "args_options": text}).settings
        value = getattr(settings, name)
        assert (expected(value) if callable(expected) else value == expected), name
        changed = [f.name for f in dataclasses.fields(TrainSettings)
                   if getattr(settings, f.name) != getattr(default, f.name)]
        assert changed == [name], (name, changed)
        opt, opt_default = settings.yolov5_opt(), default.yolov5_opt()
        assert [k for k in opt if opt[k] != opt_default[k]] == [opt_name], name
    with pytest.raises(ConfigError) as info:
        build_section(TrainingConfig, {"model": "yolov5n", "args_options": "--no-such-flag"})
    assert info.value.message.endswith("accepted: " + ", ".join(flag.usage for flag in declared.values())
                                       + ", --exist-ok")


def test_the_checkpoints_opt_uses_yolov5s_names():
    opt = TrainSettings(model="yolov5n", epochs=3, img_size=320, freeze=2, autoanchor=False).yolov5_opt()
    assert opt["cfg"] == "yolov5n.yaml" and opt["imgsz"] == 320 and opt["freeze"] == [2] and opt["noautoanchor"]
    assert "device" not in opt and opt["hyp"]["lr0"] == SCRATCH_LOW["lr0"] and "label_smoothing" not in opt["hyp"]


def test_label_smoothing_has_one_flag():
    with pytest.raises(ConfigError, match="--label-smoothing"):
        build_section(TrainingConfig, {"model": "yolov5n", "args_options": "--hyp label_smoothing=0.1"})
