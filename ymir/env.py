"""`/in/env.yaml`: which task to run and where the platform put the inputs."""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ymir.coerce import to_bool
from ymir.errors import ConfigError
from ymir.paths import OutputPaths, PathMapper

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnvConfig:
    task_id: str
    protocol_version: str
    run_training: bool
    run_mining: bool
    run_infer: bool
    models_dir: Path
    training_index_file: Optional[Path]
    val_index_file: Optional[Path]
    candidate_index_file: Optional[Path]
    config_file: Path
    output: OutputPaths


MAX_YAML_VALUES = 100_000  # far above any real env.yaml or config.yaml (the longest part: class_names)
MAX_YAML_BYTES = 16 << 20  # 16 MiB: far above any real env.yaml or config.yaml


def count_values(data, limit: int) -> int:
    """How many values `data` holds once YAML aliases are expanded, counting no further than limit + 1.

    safe_load shares an aliased node instead of copying it, so a few hundred bytes of nested aliases make a
    structure whose expansion (by repr, a log line, a copy) takes gigabytes; counting stops early instead."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set)):
            stack.extend(item)
    return count


def read_yaml_mapping(path: Path, what: str) -> dict:
    """A YAML mapping from a regular file of at most MAX_YAML_BYTES (UTF-8, with or without a byte-order mark)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{what} {path} must be a regular file of at most {MAX_YAML_BYTES:,} bytes")
        with open(path, "rb") as f:
            data = yaml.safe_load(f.read(MAX_YAML_BYTES).decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {path} cannot be read as YAML: {exc}") from None
    if data is None:
        data = {}
    if count_values(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise ConfigError(f"{what} {path} expands to more than {MAX_YAML_VALUES:,} values (nested YAML aliases?)")
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a YAML mapping, got {type(data).__name__}")
    return data


def load_env(mapper: PathMapper) -> EnvConfig:
    raw = read_yaml_mapping(mapper.env_file, "env.yaml")
    inputs = raw.get("input") or {}
    if not isinstance(inputs, dict):
        raise ConfigError(f"env.yaml key 'input' must be a mapping, got {inputs!r}")

    def flag(key: str) -> bool:
        return to_bool(raw.get(key, False), f"env.yaml {key}")

    def optional_path(key: str, default: Optional[str] = None) -> Optional[Path]:
        value = inputs.get(key, default)
        return mapper(value) if value else None

    env = EnvConfig(
        task_id=str(raw.get("task_id") or "default-task"),
        protocol_version=str(raw.get("protocol_version") or "0.0.0"),
        run_training=flag("run_training"),
        run_mining=flag("run_mining"),
        run_infer=flag("run_infer"),
        models_dir=optional_path("models_dir", "/in/models") or mapper("/in/models"),
        training_index_file=optional_path("training_index_file"),
        val_index_file=optional_path("val_index_file"),
        candidate_index_file=optional_path("candidate_index_file"),
        config_file=optional_path("config_file", "/in/config.yaml") or mapper.config_file,
        output=mapper.output,
    )
    if not (env.run_training or env.run_mining or env.run_infer):
        raise ConfigError("env.yaml asks for no task: run_training, run_mining and run_infer are all false")
    if env.run_training and (env.run_mining or env.run_infer):
        LOG.warning("env.yaml asks for training and for %s: a YMIR task does one or the other, so this run only "
                    "trains (mine or infer with the trained model in a task of its own)",
                    " and ".join(name for name, on in (("mining", env.run_mining), ("inference", env.run_infer))
                                 if on))
    return env
