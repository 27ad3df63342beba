"""Reading YMIR's index files and annotations into samples the engine can train and validate on.

A broken line, image, annotation or box costs only itself: it is counted in a DatasetReport and reported
once, in a summary. Only a split left with no usable image is an error (DatasetError, 300002).
"""
from __future__ import annotations

import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from utils.data.images import ImageReadError, jpeg_is_truncated, probe_image
from utils.data.sample import Sample
from ymir.annotations import AnnotationFileError, parse_ark, parse_voc
from ymir.errors import DatasetError
from ymir.paths import PathMapper

LOG = logging.getLogger(__name__)
SUMMARY_EXAMPLES = 20
MAX_INDEX_BYTES = 1 << 30  # 1 GiB: about ten million lines of YMIR's paths


@dataclass
class DatasetReport:
    """What was skipped while reading, and why."""

    images_read: int = 0
    skipped_images: List[Tuple[str, str]] = field(default_factory=list)
    box_problems: List[Tuple[str, str]] = field(default_factory=list)
    clipped_boxes: int = 0
    truncated_jpegs: List[str] = field(default_factory=list)  # kept: decoded as far as their data goes

    def skip_image(self, image: str, reason: str) -> None:
        self.skipped_images.append((image, reason))

    def box_problem(self, image: str, reason: str) -> None:
        self.box_problems.append((image, reason))

    @property
    def clean(self) -> bool:
        return not self.skipped_images and not self.box_problems and not self.truncated_jpegs

    def summary(self, title: str) -> str:
        lines = [f"{title}: {self.images_read} images read, {len(self.skipped_images)} skipped, "
                 f"{len(self.box_problems)} boxes dropped, {self.clipped_boxes} boxes clipped to the image"]
        for what, items in (("skipped image", self.skipped_images), ("dropped box", self.box_problems)):
            if not items:
                continue
            reasons = Counter(_reason_kind(reason) for _, reason in items)
            lines.append(f"  {what} reasons: " + "; ".join(f"{r} x{n}" for r, n in reasons.most_common()))
            for image, reason in items[:SUMMARY_EXAMPLES]:
                lines.append(f"  {what}: {image}: {reason}")
            if len(items) > SUMMARY_EXAMPLES:
                lines.append(f"  ... and {len(items) - SUMMARY_EXAMPLES} more")
        if self.truncated_jpegs:
            lines.append(f"  {len(self.truncated_jpegs)} truncated JPEG(s) kept (no end marker: the missing part "
                         f"decodes as grey), e.g. {', '.join(self.truncated_jpegs[:5])}")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    """'line 3: unknown class index: 9' -> 'unknown class index'."""
    text = reason.split(": ", 1)[-1] if reason.startswith(("line ", "object ")) else reason
    return text.split(":")[0].split("(")[0].strip()


def read_index_lines(index_file: Path) -> List[str]:
    """The non-blank lines of an index file: UTF-8 with or without a byte-order mark, LF or CRLF line ends; a
    regular file of at most MAX_INDEX_BYTES (a device such as /dev/zero would be read without end)."""
    try:
        info = os.stat(index_file)
        if not stat.S_ISREG(info.st_mode):
            raise DatasetError(f"index file {index_file} is not a regular file")
        if info.st_size > MAX_INDEX_BYTES:
            raise DatasetError(f"index file {index_file} holds {info.st_size:,} bytes, more than the "
                               f"{MAX_INDEX_BYTES:,} an index of millions of images needs")
        with open(index_file, "rb") as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise DatasetError(f"index file not found: {index_file}") from None
    except OSError as exc:
        raise DatasetError(f"index file {index_file} unreadable: {exc.strerror}") from None
    text = data[:MAX_INDEX_BYTES].decode("utf-8-sig", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_candidates(index_file: Path, mapper: PathMapper) -> List[Tuple[str, Path]]:
    """Candidate images: (path as written in the index, local path), each path once (a repeated line is scored
    once, and said so). Nothing is opened here."""
    lines = read_index_lines(index_file)
    written = [line.split("\t")[0] for line in lines]
    unique = list(dict.fromkeys(written))
    if len(unique) < len(written):
        repeated = [p for p, n in Counter(written).items() if n > 1]
        LOG.warning("the candidate index %s lists %d image(s) more than once (%d repeated lines), e.g. %s: each is "
                    "scored and written once", index_file, len(repeated), len(written) - len(unique), repeated[:3])
    if not unique:
        raise DatasetError(f"the candidate index {index_file} lists no image")
    return [(p, mapper(p)) for p in unique]


def clip_boxes(raw: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip xyxy boxes to the image; return (boxes, keep mask of non-degenerate boxes, clipped mask)."""
    clipped = raw.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = ((clipped[:, 2] - clipped[:, 0]) >= 1) & ((clipped[:, 3] - clipped[:, 1]) >= 1)
    changed = np.any(clipped != raw, axis=1)
    return clipped, keep, changed & keep


def read_sample(image: Path, annotation: Path, class_names: Sequence[str], annotation_format: str,
                report: DatasetReport) -> Sample | None:
    try:
        info = probe_image(image)
    except ImageReadError as exc:
        report.skip_image(str(image), str(exc))
        return None
    if jpeg_is_truncated(image):
        report.truncated_jpegs.append(str(image))
    try:
        if annotation_format == "ark":
            raw_boxes, problems = parse_ark(annotation, len(class_names))
        else:
            raw_boxes, problems = parse_voc(annotation, class_names)
    except AnnotationFileError as exc:
        how = "ark text" if annotation_format == "ark" else "VOC XML"
        report.skip_image(str(image), f"{exc}: {annotation} (read as {how} by config export_format, which is "
                                      "det-voc:raw when the key is absent)")
        return None
    for problem in problems:
        report.box_problem(str(annotation), problem)
    raw = np.array([b[1:] for b in raw_boxes], dtype=np.float32).reshape(-1, 4)
    classes = np.array([b[0] for b in raw_boxes], dtype=np.int64)
    boxes, keep, clipped = clip_boxes(raw, info.width, info.height)
    for row in np.flatnonzero(~keep):
        report.box_problem(str(annotation),
                           f"degenerate box: {raw[row].tolist()} in a {info.width}x{info.height} image")
    report.clipped_boxes += int(clipped.sum())
    return Sample(image, info.width, info.height, info.orientation, boxes[keep], classes[keep])


def read_split(index_file: Path, class_names: Sequence[str], annotation_format: str, mapper: PathMapper,
               split: str) -> Tuple[List[Sample], DatasetReport]:
    """Read a train or val index (`image TAB annotation` per line). Raises DatasetError when nothing is usable."""
    report = DatasetReport()
    samples = []
    for number, line in enumerate(read_index_lines(index_file), 1):
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            report.skip_image(f"{index_file}:{number}",
                              f"bad index line: expected 'image TAB annotation', got {line!r}")
            continue
        relative = [f for f in fields if not f.startswith("/")]
        if relative:
            report.skip_image(f"{index_file}:{number}", f"relative path {relative[0]!r}: index files hold the "
                                                        "container's absolute paths, such as /in/images/a.jpg")
            continue
        sample = read_sample(mapper(fields[0]), mapper(fields[1]), class_names, annotation_format, report)
        if sample is not None:
            samples.append(sample)
    report.images_read = len(samples)
    text = report.summary(f"{split} split ({index_file})")
    (LOG.info if report.clean else LOG.warning)(text)
    if not samples:
        raise DatasetError(f"the {split} split has no usable image ({len(report.skipped_images)} skipped; "
                           f"first reason: {report.skipped_images[0][1] if report.skipped_images else 'empty index'})")
    return samples, report
