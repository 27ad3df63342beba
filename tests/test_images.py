"""Images are read in displayed orientation: EXIF rotation applies to pixels and size alike."""
import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from utils.images import EXIF_ORIENTATION_TAG, ImageReadError, apply_orientation, probe_image, read_image


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
