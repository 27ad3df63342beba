"""Reading images in their displayed orientation: the EXIF orientation tag is applied to pixels and size alike."""
from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION_TAG = 0x0112
MIN_IMAGE_SIDE = 2


class ImageReadError(Exception):
    """The file is missing, empty, not an image, or cannot be decoded."""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # displayed width, after the EXIF orientation
    height: int
    orientation: int  # EXIF orientation 1..8 (1: as stored)


def probe_image(path: Path) -> ImageInfo:
    """Read size and orientation from the header only, without decoding the pixels. Every failure of the file
    system on this path (missing, a name too long, permission, a loop of links) is this image's ImageReadError."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageReadError("image file not found") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise ImageReadError(f"cannot open the file ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(mode):  # a FIFO or device would block the reader forever
        raise ImageReadError("not a regular file")
    try:
        with Image.open(path) as img:
            width, height = img.size
            try:
                orientation = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
            except Exception:  # a broken EXIF block must not cost the image
                orientation = 1
    except FileNotFoundError:
        raise ImageReadError("image file not found") from None
    except Image.DecompressionBombError as exc:  # a header claiming more pixels than any real photo
        raise ImageReadError(f"image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        size = tiff_size(path)  # e.g. a TIFF of 32-bit float samples, which Pillow does not read: its header
        if size is None:
            raise ImageReadError(f"not a readable image ({type(exc).__name__})") from None
        width, height, orientation = size[0], size[1], 1
        if width * height > (Image.MAX_IMAGE_PIXELS or 0) * 2:  # Pillow's own bound on what it decodes
            raise ImageReadError(f"image too large to decode safely ({width}x{height} pixels)") from None
    if orientation not in range(1, 9):
        orientation = 1
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageReadError(f"image too small ({width}x{height})")
    if orientation >= 5:  # 5..8 swap width and height
        width, height = height, width
    return ImageInfo(width, height, orientation)


def tiff_size(path: Path) -> Optional[Tuple[int, int]]:
    """(width, height) from a classic TIFF's first image header (tags 256 and 257), read without decoding; None
    for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8 or head[:4] not in (b"II*\0", b"MM\0*"):
                return None
            order = "<" if head[:2] == b"II" else ">"
            f.seek(struct.unpack(order + "I", head[4:8])[0])
            (count,) = struct.unpack(order + "H", f.read(2))
            found = {}
            for _ in range(min(count, 4096)):
                entry = f.read(12)
                if len(entry) < 12:
                    break
                tag, kind = struct.unpack(order + "HH", entry[:4])
                if tag in (256, 257) and kind in (3, 4):
                    found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10 if kind == 3 else 12])[0]
    except (OSError, struct.error):
        return None
    return (found[256], found[257]) if 256 in found and 257 in found and min(found.values()) > 0 else None


def jpeg_is_truncated(path: Path) -> bool:
    """A JPEG without its end-of-image marker (FF D9) as its last bytes: cut off in transfer or storage.
    Decoders fill the missing part with grey; YOLOv5 warns about such files, and so do we."""
    try:
        with open(path, "rb") as f:
            if f.read(2) != b"\xff\xd8":
                return False
            f.seek(-2, os.SEEK_END)
            return f.read(2) != b"\xff\xd9"
    except OSError:
        return False


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels stored with EXIF `orientation` into the displayed image (HWC array)."""
    if orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    elif orientation == 5:
        img = img.transpose(1, 0, 2)
    elif orientation == 6:
        img = np.rot90(img, k=-1)
    elif orientation == 7:
        img = img.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        img = np.rot90(img, k=1)
    return np.ascontiguousarray(img)


def read_image(path: Path, orientation: int | None = None) -> np.ndarray:
    """Decode to a BGR uint8 HWC array in displayed orientation; raises ImageReadError."""
    if orientation is None:
        orientation = probe_image(path).orientation
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"cannot read file ({getattr(exc, 'strerror', None) or exc})") from None
    if data.size == 0:
        raise ImageReadError("empty file")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        img = _decode_other_depth(data)
    if img is None:
        raise ImageReadError("cannot decode image")
    return apply_orientation(img, orientation)


def _decode_other_depth(data: np.ndarray) -> np.ndarray | None:
    """Images whose samples OpenCV's 8-bit colour path refuses (32-bit float TIFFs, as scientific and remote-sensing
    tools write them): decoded as they are, then made 8-bit BGR. Float samples are taken as 0..1 when none exceeds
    1, else as 0..255; NaN is black. None when this does not decode it either."""
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.ndim not in (2, 3) or min(img.shape[:2]) < 1:
        return None
    if img.dtype.kind == "f":
        img = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if img.size and float(img.max()) <= 1.0 else 1.0
        img = np.clip(img * scale, 0, 255).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = (img.astype(np.float64) * 255 / np.iinfo(img.dtype).max).round().astype(np.uint8) \
            if img.dtype.kind in "ui" else None
        if img is None:
            return None
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(img[:, :, :3]) if channels >= 3 else None  # BGR, or BGRA without its alpha
