"""Tests of the shared checks: box tolerance, image validation modes, the raise-or-skip problem log."""

import io
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from robustdet_tf.data import contract, validation


def _jpeg_bytes(height=6, width=10):
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("box, reason", [
    ((0, 0, 10, 6), None),
    ((-1, -1, 11, 7), None),  # within the one-pixel tolerance
    ((-1.5, 0, 5, 5), validation.BOX_OUTSIDE_IMAGE),
    ((0, 0, 5, 7.5), validation.BOX_OUTSIDE_IMAGE),
    ((3, 1, 3, 5), validation.DEGENERATE_BOX),
    ((3, 5, 4, 2), validation.DEGENERATE_BOX),
])
def test_check_box(box, reason):
    error = validation.check_box(box, 6, 10, "/a.xml", "object #0")
    if reason is None:
        assert error is None
    else:
        assert error.reason == reason and error.path == "/a.xml"
        assert "/a.xml" in str(error) and "object #0" in str(error) and "skip_bad=True" in str(error)


def test_image_size_modes(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg_bytes())
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(_jpeg_bytes()[:-40])
    for mode in ("header", "full"):
        assert validation.image_size(str(good), mode) == (6, 10)
    assert validation.image_size(str(good), "none") is None
    assert validation.image_size(str(truncated), "none") is None  # trusted, as documented
    with pytest.raises(contract.MissingFileError, match="absent.jpg.*not found") as missing:
        validation.image_size(str(tmp_path / "absent.jpg"), "none")
    assert missing.value.reason == validation.MISSING_IMAGE


def test_header_mode_decodes_only_unusual_files(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image" * 10)
    with pytest.raises(contract.BadExampleError) as error:
        validation.image_size(str(garbage), "header")
    assert error.value.reason == validation.CORRUPT_IMAGE and "garbage.jpg" in str(error.value)
    png = tmp_path / "really_a_png.jpg"  # not a JPEG: decode_jpeg reads PNG too, so it is accepted with its size
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).save(png, format="PNG")
    assert validation.image_size(str(png), "header") == (3, 4)


def test_validate_mode_is_checked():
    validation.check_validate_mode("full")
    with pytest.raises(ValueError, match="'fast'.*header"):
        validation.check_validate_mode("fast")


def test_problem_log_raises_or_counts(caplog):
    strict = validation.ProblemLog(skip_bad=False)
    error = validation.bad("broken", validation.BAD_ANNOTATION, "/b.xml")
    with pytest.raises(contract.BadExampleError, match="/b.xml: broken. Fix the file"):
        strict.report(error)
    lenient = validation.ProblemLog(skip_bad=True)
    lenient.report(error)
    lenient.report(validation.missing("gone", validation.MISSING_IMAGE, "/c.jpg", "Re-extract"))
    lenient.report(validation.bad("again", validation.BAD_ANNOTATION, "/d.xml", "Correct it"))
    assert lenient.counts == {validation.BAD_ANNOTATION: 2, validation.MISSING_IMAGE: 1}
    assert [p.path for p in lenient.problems] == ["/b.xml", "/c.jpg", "/d.xml"]
    with caplog.at_level(logging.WARNING):
        lenient.log_summary("VOC test", 7)
    assert "kept 7 images" in caplog.text and "bad_annotation=2" in caplog.text
