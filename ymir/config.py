"""Typed, validated task configuration: template defaults overlaid by `/in/config.yaml`.

Every value is checked here, at the edge; the tasks receive plain typed objects. An unknown key is kept in
`ExecutorConfig.unknown` and logged. A wrong value is a ConfigError naming key, value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from models.activations import activation_names, resolve_activation
from models.architecture import MODEL_NAMES, architecture
from utils.train_settings import TrainSettings
from ymir import coerce
from ymir.env import EnvConfig, read_yaml_mapping
from ymir.errors import ConfigError, one_line
from ymir.mining.aldd import ALDD_RESOLUTIONS
from ymir.mining.registry import NAMES as MINING_ALGORITHMS
from ymir.paths import PathMapper
from ymir.train_options import parse_args_options

LOG = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
ANNOTATION_FORMATS = {"ark": "ark", "det-ark": "ark", "voc": "voc", "det-voc": "voc"}
IMG_SIZE_STEP = 32
IMG_SIZE_MAX = 8192
MODEL_IMG_SIZE = 0  # mining and inference: run at the size the model was trained at
MAX_CLASS_WEIGHT = 1e6  # ALDD's per-class weights: any ratio a user means, and sums that stay finite in float32
MAX_BATCH = 1024
MAX_WORKERS = 64
MAX_DETECTIONS = 100_000
MAX_EPOCHS = 100_000
OPSET_RANGE = (11, 20)
# Keys the platform consumes itself (docker flags, export) or sets for its own bookkeeping.
PLATFORM_ONLY_KEYS = {"shm_size", "gpu_count", "object_type", "run_infer", "run_mining", "max_boxes",
                      "git_url", "git_branch", "code_config", "openpai_enable"}


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed; allowed: {allowed}")


def check_img_size(value: int, key: str = "img_size") -> int:
    """The range only: the model rounds the size up to what it needs (ymir.tasks.fitted_image_size)."""
    _check(0 < value <= IMG_SIZE_MAX, key, value, f"a positive number of pixels up to {IMG_SIZE_MAX} (rounded up to "
           f"a multiple of {IMG_SIZE_STEP}, of 64 for P6 models)")
    return value


@dataclass(frozen=True)
class PlatformConfig:
    """Keys the platform injects into config.yaml."""

    task_id: str = ""
    class_names: Tuple[str, ...] = ()
    gpu_ids: Tuple[int, ...] = ()  # empty: run on CPU
    pretrained_model_params: Tuple[Path, ...] = ()
    model_params_path: Tuple[Path, ...] = ()
    export_format: str = "det-voc:raw"  # what the platform exports when config.yaml names none (templates: ark)

    @property
    def annotation_format(self) -> str:
        """'ark' or 'voc', from export_format `<annotation>:<asset>`."""
        return ANNOTATION_FORMATS[self.export_format.split(":", 1)[0].strip().lower()]

    @property
    def device_type(self) -> str:
        return "cuda" if self.gpu_ids else "cpu"


@dataclass(frozen=True)
class InferConfig:
    img_size: int = MODEL_IMG_SIZE  # the size the model was trained at (ymir.tasks.prediction_image_size)
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    batch_size_per_gpu: int = 16
    num_workers_per_gpu: int = 4
    pin_memory: bool = False
    force_img_size: bool = False  # img_size 640 is a choice, not the earlier templates' default

    def validate(self) -> InferConfig:
        _check(0.0 <= self.conf_thres <= 1.0, "conf_thres", self.conf_thres, "a number in [0, 1]")
        _check(0.0 < self.iou_thres <= 1.0, "iou_thres", self.iou_thres, "a number in (0, 1]")
        _check(1 <= self.max_det <= MAX_DETECTIONS, "max_det", self.max_det, f"an integer from 1 to {MAX_DETECTIONS:,}")
        _check(1 <= self.batch_size_per_gpu <= MAX_BATCH, "batch_size_per_gpu", self.batch_size_per_gpu,
               f"an integer from 1 to {MAX_BATCH}")
        _check(0 <= self.num_workers_per_gpu <= MAX_WORKERS, "num_workers_per_gpu", self.num_workers_per_gpu,
               f"an integer from 0 to {MAX_WORKERS}")
        if self.img_size == MODEL_IMG_SIZE:
            return self
        return dataclasses.replace(self, img_size=check_img_size(self.img_size))


@dataclass(frozen=True)
class MiningConfig(InferConfig):
    mining_algorithm: str = "aldd"
    class_distribution_scores: Tuple[float, ...] = ()
    aldd_resolution: str = "native"
    cald_class_diversity: bool = False
    cald_undetected_share: float = 1.0
    diverse_empty_share: float = 0.1  # ymir.mining.diverse: the share of every top given to predicted-empty images
    seed: int = 0

    def validate(self) -> MiningConfig:
        base = InferConfig.validate(self)
        algorithm = self.mining_algorithm.strip().lower()
        _check(algorithm in MINING_ALGORITHMS, "mining_algorithm", self.mining_algorithm, ", ".join(MINING_ALGORITHMS))
        resolution = self.aldd_resolution.strip().lower()
        _check(resolution in ALDD_RESOLUTIONS, "aldd_resolution", self.aldd_resolution, ", ".join(ALDD_RESOLUTIONS))
        _check(all(0 <= w <= MAX_CLASS_WEIGHT for w in self.class_distribution_scores), "class_distribution_scores",
               self.class_distribution_scores, f"comma-separated numbers from 0 to {MAX_CLASS_WEIGHT:g} (weights "
               "relative to each other)")
        _check(0.0 <= self.diverse_empty_share <= 1.0, "diverse_empty_share", self.diverse_empty_share,
               "a number in [0, 1]")
        _check(0.0 <= self.cald_undetected_share <= 1.0, "cald_undetected_share", self.cald_undetected_share,
               "a number in [0, 1]")
        _check(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        return dataclasses.replace(base, mining_algorithm=algorithm, aldd_resolution=resolution)


@dataclass(frozen=True)
class TrainingConfig:
    model: str = "yolov5s"
    batch_size_per_gpu: int = 16
    num_workers_per_gpu: int = 4
    epochs: int = 100
    img_size: int = 640
    opset: int = 11
    args_options: str = "--exist-ok"  # as the reference executor's template has it: harmless, outputs go to /out
    save_best_only: bool = True
    save_period: int = 10
    sync_bn: bool = False
    activation: str = "SiLU"
    ymir_saved_file_patterns: str = ""
    # the trainer's settings, made once from the keys above and args_options (the task fits img_size to the model
    # and adds the device)
    settings: Optional[TrainSettings] = field(default=None, metadata={"derived": True})

    def validate(self) -> TrainingConfig:
        model = self.model.strip().lower()
        if model.endswith((".yaml", ".pt")):
            model = model.rsplit(".", 1)[0]
        _check(model in MODEL_NAMES, "model", self.model, ", ".join(MODEL_NAMES))
        _check(1 <= self.batch_size_per_gpu <= MAX_BATCH, "batch_size_per_gpu", self.batch_size_per_gpu,
               f"an integer from 1 to {MAX_BATCH}")
        _check(0 <= self.num_workers_per_gpu <= MAX_WORKERS, "num_workers_per_gpu", self.num_workers_per_gpu,
               f"an integer from 0 to {MAX_WORKERS}")
        _check(1 <= self.epochs <= MAX_EPOCHS, "epochs", self.epochs, f"an integer from 1 to {MAX_EPOCHS:,}")
        _check(OPSET_RANGE[0] <= self.opset <= OPSET_RANGE[1], "opset", self.opset,
               f"an integer from {OPSET_RANGE[0]} to {OPSET_RANGE[1]}")
        _check(self.save_period >= 1, "save_period", self.save_period, "an integer >= 1")
        try:
            shlex.split(self.args_options)
        except ValueError as exc:
            raise ConfigError(f"config key 'args_options' = {self.args_options!r} cannot be split: {exc}") from None
        flagged = parse_args_options(self.args_options)
        arch = architecture(model)
        layers = len(arch["backbone"]) + len(arch["head"])
        if flagged["freeze"] >= layers:
            raise ConfigError(f"config key 'args_options' = {self.args_options!r}: --freeze {flagged['freeze']} would "
                              f"freeze every layer of {model} ({layers} layers, the last the detection head); "
                              f"allowed: 0 to {layers - 1}")
        try:
            activation = resolve_activation(self.activation).__name__
        except KeyError:
            raise ConfigError(f"config key 'activation' = {self.activation!r} is not allowed; allowed: "
                              f"{', '.join(activation_names())}") from None
        for pattern in self.saved_file_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"config key 'ymir_saved_file_patterns' = {self.ymir_saved_file_patterns!r} has a "
                                  f"bad regex {pattern!r} ({exc}); allowed: comma-separated regexes") from None
        img_size = check_img_size(self.img_size)
        settings = TrainSettings(model=model, epochs=self.epochs, batch_size=self.batch_size_per_gpu,
                                 img_size=img_size, workers=self.num_workers_per_gpu, sync_bn=self.sync_bn, **flagged)
        return dataclasses.replace(self, model=model, activation=activation, img_size=img_size, settings=settings)

    @property
    def saved_file_patterns(self) -> Tuple[str, ...]:
        return tuple(p.strip() for p in self.ymir_saved_file_patterns.split(",") if p.strip())


@dataclass(frozen=True)
class ExecutorConfig:
    platform: PlatformConfig
    training: Optional[TrainingConfig] = None
    mining: Optional[MiningConfig] = None
    infer: Optional[InferConfig] = None
    unknown: Dict[str, object] = field(default_factory=dict)


_COERCERS = {
    "int": coerce.to_int,
    "float": coerce.to_float,
    "bool": coerce.to_bool,
    "str": coerce.to_str,
    "Tuple[float, ...]": coerce.to_float_list,
    "Tuple[str, ...]": coerce.to_str_list,
}


def config_fields(cls) -> list:
    """The fields of a section that config.yaml sets (not those validate() derives from them)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("derived")]


def build_section(cls, values: dict):
    """Build dataclass `cls` from the keys of `values` it declares, coercing each by its declared type."""
    kwargs = {}
    for f in config_fields(cls):
        if f.name in values and values[f.name] is not None:
            kwargs[f.name] = _COERCERS[f.type](values[f.name], f.name)
    return cls(**kwargs).validate()


def section_keys(cls) -> set:
    return {f.name for f in config_fields(cls)}


def load_template(name: str) -> dict:
    return read_yaml_mapping(TEMPLATE_DIR / f"{name}-template.yaml", f"{name}-template.yaml")


def _gpu_ids(value) -> Tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    text = coerce.to_str(value, "gpu_id").strip()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    _check(all(p.isdigit() for p in parts), "gpu_id", value, "'' for CPU or comma-separated GPU ids like '0,1'")
    ids = tuple(int(p) for p in parts)
    _check(len(set(ids)) == len(ids), "gpu_id", value, "distinct GPU ids")
    return ids


def build_platform(raw: dict, mapper: PathMapper, need_class_names: bool) -> PlatformConfig:
    class_names = tuple(name.strip() for name in coerce.to_str_list(raw.get("class_names"), "class_names"))
    if need_class_names:
        _check(len(class_names) > 0, "class_names", raw.get("class_names"), "a non-empty list of class names")
    _check(all(class_names), "class_names", raw.get("class_names"), "non-empty names")
    _check(len({n.lower() for n in class_names}) == len(class_names), "class_names", raw.get("class_names"),
           "distinct names")
    export_format = coerce.to_str(raw.get("export_format"), "export_format").strip() or PlatformConfig.export_format
    annotation = export_format.split(":", 1)[0].strip().lower()
    _check(":" in export_format and annotation in ANNOTATION_FORMATS, "export_format", export_format,
           "ark:raw, det-ark:raw, voc:raw or det-voc:raw")

    def paths(key: str) -> Tuple[Path, ...]:
        return tuple(mapper(p) for p in coerce.to_str_list(raw.get(key), key)) if raw.get(key) else ()

    return PlatformConfig(
        task_id=coerce.to_str(raw.get("task_id"), "task_id"),
        class_names=class_names,
        gpu_ids=_gpu_ids(raw.get("gpu_id")),
        pretrained_model_params=paths("pretrained_model_params"),
        model_params_path=paths("model_params_path"),
        export_format=export_format,
    )


# Other names users give a key: the reference executor's documentation calls the activation `activate`.
KEY_ALIASES = {"activate": "activation"}


def resolve_aliases(raw: dict) -> dict:
    """config.yaml with each alias under its key's name; an alias and its key set to different values is an
    error."""
    raw = dict(raw)
    for alias, key in KEY_ALIASES.items():
        if alias not in raw:
            continue
        value = raw.pop(alias)
        if key in raw and str(raw[key]).strip().lower() != str(value).strip().lower():
            raise ConfigError(f"config keys {alias!r} and {key!r} name the same setting but differ: "
                              f"{one_line(repr(value), 80)} vs {one_line(repr(raw[key]), 80)}; set one of them")
        raw[key] = value
    return raw


def load_config(env: EnvConfig, mapper: PathMapper) -> ExecutorConfig:
    """Read config.yaml, overlay it on the task's template, validate and type everything."""
    raw = resolve_aliases(read_yaml_mapping(env.config_file, "config.yaml"))
    platform = build_platform(raw, mapper, need_class_names=env.run_training)
    known = set(PLATFORM_ONLY_KEYS) | {"task_id", "class_names", "gpu_id", "pretrained_model_params",
                                       "model_params_path", "export_format"}
    sections = {}
    if env.run_training:
        sections["training"] = build_section(TrainingConfig, {**load_template("training"), **raw})
        known |= section_keys(TrainingConfig)
    else:
        # YMIR sends only the mining template for mining + inference runs: the infer defaults fill the rest.
        defaults = load_template("infer")
        if env.run_mining:
            defaults.update(load_template("mining"))
            sections["mining"] = build_section(MiningConfig, {**defaults, **raw})
            known |= section_keys(MiningConfig)
        if env.run_infer:
            sections["infer"] = build_section(InferConfig, {**defaults, **raw})
            known |= section_keys(InferConfig)
    unknown = {key: value for key, value in raw.items() if key not in known}
    for key, value in unknown.items():
        close = difflib.get_close_matches(str(key), sorted(known | set(KEY_ALIASES)), n=1, cutoff=0.75)
        if close:
            LOG.warning("config key %s = %s is not used by this task: did you mean %r?", one_line(repr(key), 100),
                        one_line(repr(value), 200), close[0])
        else:
            LOG.info("config key %s = %s is not used by this task; kept and ignored", one_line(repr(key), 100),
                     one_line(repr(value), 200))
    return ExecutorConfig(platform=platform, unknown=unknown, **sections)
