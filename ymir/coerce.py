"""Coercion of the loosely typed values YMIR sends ('True', '0', '16', 16.0) into Python types.

Each function takes the value and a label naming where it came from, and raises ConfigError with the
key, the value and what is allowed.
"""
from __future__ import annotations

import math

from ymir.errors import ConfigError

_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0", ""}


def to_bool(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"config key '{key}' = {value!r} is not a boolean; allowed: true/false (or 1/0)")


def to_int(value, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"config key '{key}' = {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if number.is_integer():
                return int(number)
    raise ConfigError(f"config key '{key}' = {value!r} is not an integer")


def to_float(value, key: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"config key '{key}' = {value!r} is not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' = {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"config key '{key}' = {value!r} is not a finite number")
    return number


def to_str(value, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"config key '{key}' = {value!r} is not a string")
    return str(value)


def to_str_list(value, key: str) -> tuple:
    """A YAML list of strings, or one comma-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
        return tuple(item for item in items if item)
    if isinstance(value, (list, tuple)):
        return tuple(to_str(item, key) for item in value)
    raise ConfigError(f"config key '{key}' = {value!r} is not a list of strings")


def to_float_list(value, key: str) -> tuple:
    """A YAML list of numbers, or one comma-separated string of numbers."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        return tuple(to_float(part, key) for part in parts)
    except ConfigError:
        raise ConfigError(f"config key '{key}' = {value!r} is not a number or a list of numbers") from None
