"""Parsers for the two annotation exports YMIR writes for training: ark (det-ark) text and voc (det-voc) XML.

Both store corners inclusive (xmax = x + w - 1). The parsers return raw boxes as (class_id, x1, y1, x2, y2)
with exclusive corners (x2 = xmax + 1), before any clipping, plus a list of problems found.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

RawBox = Tuple[int, float, float, float, float]


class AnnotationFileError(Exception):
    """The whole annotation file is unusable (missing, unreadable, malformed XML)."""


def _number(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise AnnotationFileError("annotation file not found") from None
    except OSError as exc:
        raise AnnotationFileError(f"annotation file unreadable ({exc.strerror})") from None


def parse_ark(path: Path, num_classes: int) -> Tuple[List[RawBox], List[str]]:
    """ark lines: `class, xmin, ymin, xmax, ymax[, quality, rotate_angle]`, class = index in class_names."""
    boxes, problems = [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) not in (5, 7):
            problems.append(f"line {number}: wrong field count: expected 5 or 7 comma-separated fields, "
                            f"got {len(fields)}")
            continue
        try:
            cls_value = _number(fields[0])
            coords = [_number(f) for f in fields[1:5]]
        except ValueError:
            problems.append(f"line {number}: not numbers: {line.strip()!r}")
            continue
        if not cls_value.is_integer() or not 0 <= cls_value < num_classes:
            problems.append(f"line {number}: unknown class index: {fields[0]} ({num_classes} class_names: "
                            f"0 to {num_classes - 1})")
            continue
        x1, y1, x2, y2 = coords
        boxes.append((int(cls_value), x1, y1, x2 + 1, y2 + 1))
    return boxes, problems


def parse_voc(path: Path, class_names: Sequence[str]) -> Tuple[List[RawBox], List[str]]:
    """The VOC-like XML YMIR writes: one `object` per box, class by `name`."""
    text = _read_text(path)
    if not text.strip():
        return [], []
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise AnnotationFileError(f"malformed XML ({exc})") from None
    index: Dict[str, int] = {name.strip().lower(): i for i, name in enumerate(class_names)}
    boxes, problems = [], []
    for number, obj in enumerate(root.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        if name.lower() not in index:
            problems.append(f"object {number}: unknown class: {name!r}")
            continue
        bndbox = obj.find("bndbox")
        try:
            if bndbox is None:
                raise ValueError("no bndbox")
            x1, y1, x2, y2 = (_number(bndbox.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            problems.append(f"object {number}: bad bndbox")
            continue
        boxes.append((index[name.lower()], x1, y1, x2 + 1, y2 + 1))
    return boxes, problems
