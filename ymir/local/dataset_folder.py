"""Images with their boxes (LabelledImage), and reading them from a dataset on disk: a folder of images with YOLO
txt labels (`images/ -> labels/`) or Pascal VOC XML (`JPEGImages/ -> Annotations/`), with the class names the
dataset gives. ymir.local.task_folder writes them out as a YMIR task folder."""
from __future__ import annotations

import hashlib
import math
import random
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from utils.data.images import ImageReadError, probe_image
from ymir.annotations import AnnotationFileError, parse_voc

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
Box = Tuple[int, int, int, int, int]  # class index, xmin, ymin, xmax, ymax (corners inclusive, as YMIR stores them)


@dataclass
class LabelledImage:
    """An image's bytes, its boxes, and (for VOC XML only) its size."""

    data: bytes
    boxes: List[Box] = field(default_factory=list)
    width: int = 0
    height: int = 0
    suffix: str = "jpg"
    source: str = ""  # the file it was read from, if any


class DatasetFolderError(Exception):
    """The dataset folder cannot be turned into a task (nothing usable in it, no class names)."""


@dataclass
class ImportReport:
    """What was read, and what was left out and why (one line per file)."""

    images: int = 0
    boxes: int = 0
    without_labels: int = 0
    skipped: List[str] = field(default_factory=list)


def image_files(folder: Path) -> List[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def label_file(image: Path, suffix: str, folders: Tuple[str, str]) -> Path:
    """The label of an image: in the dataset's label folder when the image sits under its image folder (YOLO's
    `images/ -> labels/`, VOC's `JPEGImages/ -> Annotations/`, the last such part of the path) and that file
    exists; else beside the image."""
    image_folder, label_folder = folders
    parts = image.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == image_folder:
            candidate = Path(*parts[:i], label_folder, *parts[i + 1:]).with_suffix(suffix)
            if candidate.is_file():
                return candidate
            break
    return image.with_suffix(suffix)


LABEL_LAYOUT = {"yolo": (".txt", ("images", "labels")), "voc": (".xml", ("JPEGImages", "Annotations"))}


def yolo_boxes(text: str, width: int, height: int, num_classes: int) -> Tuple[List[Box], List[str]]:
    """YOLO txt (`class cx cy w h`, fractions of the image size) to pixel corners, inclusive."""
    boxes, problems = [], []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, w, h = int(fields[0]), *(float(f) for f in fields[1:])
            if not all(math.isfinite(v) for v in (cx, cy, w, h)):
                raise ValueError
        except ValueError:
            problems.append(f"line {number}: expected 'class cx cy w h', got {line.strip()!r}")
            continue
        if max(cx, cy, w, h) > 1.5:
            problems.append(f"line {number}: values above 1 ({line.strip()!r}): YOLO labels hold fractions of the "
                            "image's width and height, not pixels")
            continue
        if not 0 <= cls < num_classes:
            problems.append(f"line {number}: class {cls} has no name ({num_classes} names given)")
            continue
        x1 = max(0, int(round((cx - w / 2) * width)))
        y1 = max(0, int(round((cy - h / 2) * height)))
        x2 = min(width, int(round((cx + w / 2) * width))) - 1
        y2 = min(height, int(round((cy + h / 2) * height))) - 1
        if x2 < x1 or y2 < y1:
            problems.append(f"line {number}: empty box")
            continue
        boxes.append((cls, x1, y1, x2, y2))
    return boxes, problems


def voc_names(files: Iterable[Path]) -> List[str]:
    """The class names used in VOC XML files, sorted."""
    names = set()
    for file in files:
        try:
            names.update((obj.findtext("name") or "").strip().lower() for obj in ET.parse(file).iter("object"))
        except (ET.ParseError, OSError):
            continue
    return sorted(n for n in names if n)


def read_dataset_folder(images_root: Path, labels: str, class_names: Sequence[str],
                        seen: Optional[Dict[str, Path]] = None) -> Tuple[List[LabelledImage], ImportReport]:
    """Every image under images_root with its YOLO txt or VOC XML boxes. An image that cannot be decoded,
    whose label file is malformed, or whose bytes repeat an image already read (`seen`: sha1 -> path; YMIR keeps
    one copy of an image) is left out and reported; an image without a label file has no boxes."""
    images, report = [], ImportReport()
    seen = {} if seen is None else seen
    suffix, folders = LABEL_LAYOUT[labels]
    for path in image_files(images_root):
        data = path.read_bytes()
        sha1 = hashlib.sha1(data).hexdigest()
        if sha1 in seen:
            report.skipped.append(f"{path}: the same image as {seen[sha1]}")
            continue
        seen[sha1] = path
        try:  # the size as displayed (EXIF orientation applied), as the executor and YOLOv5 read it
            info = probe_image(path)
        except ImageReadError as exc:
            report.skipped.append(f"{path}: {exc}")
            continue
        width, height = info.width, info.height
        label = label_file(path, suffix, folders)
        boxes: List[Box] = []
        if label.is_file():
            try:
                boxes, problems = _read_label(label, labels, width, height, class_names)
            except AnnotationFileError as exc:
                report.skipped.append(f"{label}: {exc}")
                continue
            report.skipped.extend(f"{label}: {problem} (box left out)" for problem in problems)
        else:
            report.without_labels += 1
        report.images += 1
        report.boxes += len(boxes)
        images.append(LabelledImage(data, boxes, width, height, path.suffix.lower().lstrip("."), str(path)))
    return images, report


def _read_label(label: Path, labels: str, width: int, height: int,
                class_names: Sequence[str]) -> Tuple[List[Box], List[str]]:
    if labels == "yolo":
        return yolo_boxes(label.read_text(encoding="utf-8", errors="replace"), width, height, len(class_names))
    raw, problems = parse_voc(label, class_names)
    return [(c, int(x1), int(y1), int(x2) - 1, int(y2) - 1) for c, x1, y1, x2, y2 in raw], problems


def names_option(given: str) -> List[str]:
    """A file with one name per line, or a comma-separated list."""
    path = Path(given)
    text = path.read_text(encoding="utf-8") if path.is_file() else given.replace(",", "\n")
    return [n.strip() for n in text.splitlines() if n.strip()]


def dataset_class_names(images_root: Path, labels: str, given: Optional[str]) -> List[str]:
    """--names (a file with one name per line, or a comma-separated list); else the dataset's own list:
    classes.txt or a data.yaml `names` next to the images (YOLO), the names in the XML files (VOC)."""
    if given:
        return names_option(given)
    for folder in [images_root, *list(images_root.resolve().parents)[:2]]:
        if labels == "yolo" and (folder / "classes.txt").is_file():
            return names_option(str(folder / "classes.txt"))
        if labels == "yolo" and (folder / "data.yaml").is_file():
            names = (yaml.safe_load((folder / "data.yaml").read_text()) or {}).get("names")
            if names:
                return list(names.values()) if isinstance(names, dict) else [str(n) for n in names]
    if labels == "voc":
        files = [label_file(p, *LABEL_LAYOUT["voc"]) for p in image_files(images_root)]
        return voc_names(f for f in files if f.is_file())
    return []


def split_train_val(images: List[LabelledImage], val_fraction: float, seed: int = 0):
    """A seeded shuffle, then the first `val_fraction` (at least one image) for validation."""
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    n_val = min(len(images) - 1, max(1, int(round(len(images) * val_fraction))))
    return [images[i] for i in order[n_val:]], [images[i] for i in order[:n_val]]
