"""Dataset reading: ark and voc exports, inclusive corners, EXIF, clipping, and losses that cost only themselves."""
import numpy as np
import pytest
from PIL import Image

from utils.data.images import EXIF_ORIENTATION_TAG
from ymir.annotations import parse_ark, parse_voc
from ymir.dataset import read_candidates, read_split
from ymir.errors import DATASET_ERROR, DatasetError
from ymir.local.task_folder import voc_text
from ymir.paths import PathMapper

CLASSES = ("cat", "dog")


class Split:
    """A hand-built /in with a train index; each add() writes an image and its annotation."""

    def __init__(self, root, fmt="ark"):
        self.in_dir = root / "in"
        self.in_dir.mkdir(parents=True, exist_ok=True)
        self.fmt, self.lines = fmt, []

    def add(self, name, annotation, size=(100, 80), orientation=1, image_bytes=None):
        image = self.in_dir / "assets" / f"{name}.jpg"
        image.parent.mkdir(parents=True, exist_ok=True)
        if image_bytes is not None:
            image.write_bytes(image_bytes)
        else:
            exif = Image.Exif()
            exif[EXIF_ORIENTATION_TAG] = orientation
            Image.new("RGB", size, (90, 120, 150)).save(image, exif=exif.tobytes())
        anno = self.in_dir / "annotations" / f"{name}.{'txt' if self.fmt == 'ark' else 'xml'}"
        anno.parent.mkdir(parents=True, exist_ok=True)
        if annotation is not None:
            anno.write_text(annotation)
        self.lines.append(f"/in/assets/{name}.jpg\t/in/annotations/{anno.name}")
        return self

    def read(self):
        index = self.in_dir / "train-index.tsv"
        index.write_text("\n".join(self.lines) + "\n")
        samples, report = read_split(index, CLASSES, self.fmt, PathMapper(self.in_dir, self.in_dir.parent / "out"),
                                     "train")
        return {s.image.stem: s for s in samples}, report


def test_ark_five_and_seven_fields_inclusive_corners(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0, 5, 6, 25, 30, -1.0, 0.0\n1, 0, 0, 9, 9\n\n")
    boxes, problems = parse_ark(path, 2)
    assert boxes == [(0, 5, 6, 26, 31), (1, 0, 0, 10, 10)] and problems == []


def test_ark_bad_lines_cost_only_themselves(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("0, 5, 6, 25, 30\n7, 1, 1, 5, 5\n0, 1, 2\nx, 1, 2, 3, 4\n1, 1, 1, 4, 4, -1.0\n")
    boxes, problems = parse_ark(path, 2)
    assert boxes == [(0, 5, 6, 26, 31)]
    assert len(problems) == 4
    assert "unknown class index: 7" in problems[0] and "5 or 7" in problems[1]


def test_voc_by_class_name_case_insensitive(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(voc_text("/in/assets/a.jpg", 100, 80,
                             [(0, 5, 6, 25, 30), (1, 10, 10, 19, 19)], ("Cat", "DOG")).replace(
        "</annotation>", "<object><name>bird</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax>"
                         "<ymax>3</ymax></bndbox></object></annotation>"))
    boxes, problems = parse_voc(path, CLASSES)
    assert boxes == [(0, 5, 6, 26, 31), (1, 10, 10, 20, 20)]
    assert problems == ["object 3: unknown class: 'bird'"]


def test_split_reads_boxes_in_pixels_and_reports_what_it_skipped(tmp_path, caplog):
    split = Split(tmp_path)
    split.add("good", "0, 10, 20, 29, 39\n1, 50, 50, 59, 59, -1.0, 0.0\n")
    split.add("background", "")
    split.add("clipped", "0, -5, 70, 120, 90\n")  # runs past the 100x80 image
    split.add("degenerate", "0, 10, 10, 8, 40\n1, 200, 10, 220, 20\n0, 3, 3, 3, 3\n")  # xmax < xmin; outside; 1 px
    split.add("zero_bytes", "0, 1, 1, 5, 5\n", image_bytes=b"")
    split.add("not_an_image", "0, 1, 1, 5, 5\n", image_bytes=b"GIF? no")
    split.add("no_annotation", None)
    split.lines.append("/in/assets/missing.jpg\t/in/annotations/missing.txt")
    split.lines.append("a line without a tab or second field")
    samples, report = split.read()

    assert sorted(samples) == ["background", "clipped", "degenerate", "good"]
    np.testing.assert_array_equal(samples["good"].boxes, [[10, 20, 30, 40], [50, 50, 60, 60]])
    np.testing.assert_array_equal(samples["good"].classes, [0, 1])
    assert samples["good"].boxes.dtype == np.float32 and (samples["good"].width, samples["good"].height) == (100, 80)
    assert len(samples["background"].boxes) == 0
    np.testing.assert_array_equal(samples["clipped"].boxes, [[0, 70, 100, 80]])
    assert report.clipped_boxes == 1
    np.testing.assert_array_equal(samples["degenerate"].boxes, [[3, 3, 4, 4]])  # inclusive corners: 1x1 pixel
    assert len(report.box_problems) == 2
    skipped = dict((image.split("/")[-1], reason) for image, reason in report.skipped_images)
    assert skipped["zero_bytes.jpg"].startswith("not a readable image")
    assert skipped["not_an_image.jpg"].startswith("not a readable image")
    assert skipped["no_annotation.jpg"].startswith("annotation file not found: ")
    assert "no_annotation.txt (read as ark text by config export_format" in skipped["no_annotation.jpg"]
    assert skipped["missing.jpg"] == "image file not found"
    assert len(report.skipped_images) == 5
    # one summary, naming images and reasons
    assert caplog.text.count("train split") == 1
    assert "zero_bytes.jpg" in caplog.text and "image file not found x1" in caplog.text
    assert "degenerate box x2" in caplog.text


def test_exif_rotated_image_reports_displayed_size(tmp_path):
    split = Split(tmp_path)
    split.add("rotated", "0, 10, 70, 29, 89\n", size=(100, 80), orientation=6)  # displayed 80 wide, 100 high
    samples, _ = split.read()
    s = samples["rotated"]
    assert (s.width, s.height, s.orientation) == (80, 100, 6)
    np.testing.assert_array_equal(s.boxes, [[10, 70, 30, 90]])  # inside the displayed frame, not clipped


def test_voc_split(tmp_path):
    split = Split(tmp_path, fmt="voc")
    split.add("a", voc_text("/in/assets/a.jpg", 100, 80, [(1, 0, 0, 49, 39)], CLASSES))
    split.add("broken", "<annotation><object>")
    samples, report = split.read()
    np.testing.assert_array_equal(samples["a"].boxes, [[0, 0, 50, 40]])
    assert report.skipped_images[0][1].startswith("malformed XML")


def test_split_with_no_usable_image_is_a_dataset_error(tmp_path):
    split = Split(tmp_path)
    split.add("bad", "0, 1, 1, 5, 5\n", image_bytes=b"")
    with pytest.raises(DatasetError) as info:
        split.read()
    assert info.value.code == DATASET_ERROR and "no usable image" in info.value.message


def test_a_relative_index_path_is_skipped_saying_what_the_index_holds(tmp_path):
    split = Split(tmp_path).add("good", "0, 1, 1, 5, 5\n")
    split.lines.append("assets/good.jpg\tannotations/good.txt")
    samples, report = split.read()
    assert list(samples) == ["good"]
    assert "relative path 'assets/good.jpg': index files hold the container's absolute paths" in \
        report.skipped_images[0][1]


def test_empty_index_is_a_dataset_error(tmp_path):
    split = Split(tmp_path)
    with pytest.raises(DatasetError):
        split.read()


def test_candidates_keep_the_index_path_and_map_it(tmp_path):
    index = tmp_path / "candidate-index.tsv"
    index.write_text("/in/assets/aa/x.jpg\n\n/in/assets/bb/y.png\n")
    candidates = read_candidates(index, PathMapper(tmp_path / "in", tmp_path / "out"))
    assert [c[0] for c in candidates] == ["/in/assets/aa/x.jpg", "/in/assets/bb/y.png"]
    assert candidates[0][1] == (tmp_path / "in" / "assets" / "aa" / "x.jpg").resolve()
    index.write_text("\n")
    with pytest.raises(DatasetError):
        read_candidates(index, PathMapper(tmp_path / "in", tmp_path / "out"))


def test_a_truncated_jpeg_is_kept_and_reported(tmp_path, caplog):
    whole = tmp_path / "whole.jpg"  # noise: most of the file is the scan, after the header
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(whole, quality=95)
    data = whole.read_bytes()
    split = Split(tmp_path).add("cut", "0, 10, 20, 29, 39\n", image_bytes=data[: len(data) * 2 // 3])
    split.add("whole", "0, 10, 20, 29, 39\n", image_bytes=data)
    samples, report = split.read()
    assert sorted(samples) == ["cut", "whole"] and not report.skipped_images  # still usable
    assert [p.split("/")[-1] for p in report.truncated_jpegs] == ["cut.jpg"]
    assert "1 truncated JPEG(s) kept" in caplog.text and "cut.jpg" in caplog.text
