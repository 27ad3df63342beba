"""Images are read in displayed orientation: EXIF rotation applies to pixels and size alike."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from utils.data.images import EXIF_ORIENTATION_TAG, ImageReadError, apply_orientation, probe_image, read_image


def asymmetric_rgb(width=40, height=24):
    img = np.zeros((height, width, 3), dtype=np.uint8)
    img[:8, :10] = (255, 0, 0)  # a red block in the top-left corner marks the orientation
    img[:, -4:] = (0, 0, 255)
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pil_exif_transpose(tmp_path, orientation):
    stored = Image.fromarray(asymmetric_rgb())
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    path = tmp_path / f"o{orientation}.png"
    stored.save(path, exif=exif.tobytes())

    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    info = probe_image(path)
    assert (info.height, info.width) == expected.shape[:2]
    assert info.orientation == orientation
    bgr = read_image(path)
    np.testing.assert_array_equal(bgr[..., ::-1], expected)
    np.testing.assert_array_equal(apply_orientation(asymmetric_rgb(), orientation), expected)


def test_unreadable_files_raise_image_read_error(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(asymmetric_rgb()).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    for name in ("empty.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(ImageReadError):
            probe_image(tmp_path / name)
        with pytest.raises(ImageReadError):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError):
        read_image(tmp_path / "truncated.jpg")


def png_claiming(path, width, height):
    """A valid 1x1 PNG whose header (IHDR, CRC fixed up) claims width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_header_is_an_unreadable_image(tmp_path):
    bomb = png_claiming(tmp_path / "bomb.png", 60000, 60000)
    with pytest.raises(ImageReadError, match="too large"):
        probe_image(bomb)
    with pytest.raises(ImageReadError, match="too large"):
        read_image(bomb)
    assert probe_image(png_claiming(tmp_path / "fine.png", 640, 480)).width == 640  # the header alone is read


def test_a_fifo_is_skipped_not_waited_on(tmp_path):
    fifo = tmp_path / "image.jpg"
    os.mkfifo(fifo)  # nothing ever writes to it: opening it for reading would block
    for read in (probe_image, read_image):
        with pytest.raises(ImageReadError, match="not a regular file"):
            read(fifo)
