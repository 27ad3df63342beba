"""Config: template defaults overlaid by config.yaml, YMIR's loose types, clear errors naming the key."""
import pytest
import yaml

from models.yolo import MODEL_NAMES
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
from ymir.demo import make_workdir
from ymir.env import load_env
from ymir.errors import CONFIG_ERROR, ConfigError
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
    assert "options" not in section_keys(TrainingConfig)  # derived from args_options, not a key of config.yaml
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
    from ymir.tasks.train import StageSaver
    from ymir.train_options import TrainOptions

    for patterns, expected in (("(a+)+$", ["best.pt"]), ("onnx$", ["best.pt", "best.onnx"]),
                               ("", ["best.pt", "best.onnx"])):
        saver = StageSaver(tmp_path, TrainingConfig(model="yolov5n", ymir_saved_file_patterns=patterns).validate(),
                           ["a"], 64, TrainOptions(), [1])
        assert saver._keep(["best.pt", "best.onnx"]) == expected, patterns


def test_args_options_are_parsed_once_into_the_training_config():
    cfg = build_section(TrainingConfig, {"model": "yolov5n", "args_options": "--cos-lr --hyp lr0=0.02 --freeze 3"})
    assert cfg.options.cos_lr and cfg.options.freeze == 3 and cfg.options.hyp["lr0"] == 0.02
    assert cfg.options.hyp["label_smoothing"] == 0.0  # the one place it lives
