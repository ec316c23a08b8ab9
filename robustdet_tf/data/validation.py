"""Checks the local readers share, and the bad-input policy they follow.

* Annotation files are parsed once, in Python, when the source is built; a problem found there raises at
  once (``BadExampleError`` - a ``ValueError`` - or ``MissingFileError`` - a ``FileNotFoundError``), with a
  message naming the file and the fix.  With ``skip_bad=True`` the offending image (or, for per-object
  problems such as an unknown class or a degenerate box, the offending object) is left out instead, and the
  number left out per reason is kept in ``DetectionSource.skipped`` and logged once at the end.
* A corrupt JPEG only shows itself when decoded, and a decode error inside ``tf.data`` would stop a
  training run half way without naming the file.  The readers therefore check images when the source is
  built (``validate=``):

  - ``"header"`` (default, cheap): PIL reads the header (format and true size) and the file must end with
    the JPEG end-of-image marker, which catches truncated downloads.  Anything unusual (not a JPEG, not
    RGB/greyscale, missing end marker) is decoded once with ``tf.io.decode_jpeg``, the decoder the
    pipeline itself uses, so only files TF really cannot read are rejected.
  - ``"full"``: every image is decoded once with ``tf.io.decode_jpeg`` (slow, certain).
  - ``"none"``: only existence is checked; image sizes are trusted from the annotation.

  Whatever the mode, the tf.data map (``contract.images_to_dataset``) asserts that the decoded size equals
  the size the boxes were normalised with, and the assertion prints the file path.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from robustdet_tf.data.contract import BadExampleError, MissingFileError, ParsedImage, Problem, images_to_dataset

_LOG = logging.getLogger(__name__)

VALIDATE_MODES = ("header", "full", "none")

# A box may stick out of the image by this many pixels before it is called "outside the image": rounding in
# the annotation tools (COCO x + w slightly beyond W, VOC xmin = 0 in 1-based coordinates) is not an error.
BOX_TOLERANCE_PX = 1.0

# Reasons under which problems are counted.  Image-level reasons drop the image, object-level ones the object.
MISSING_ANNOTATION = "missing_annotation"
BAD_ANNOTATION = "bad_annotation"
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
NO_OBJECTS = "no_objects"
UNKNOWN_CLASS = "unknown_class"
DEGENERATE_BOX = "degenerate_box"
BOX_OUTSIDE_IMAGE = "box_outside_image"

_SKIP_HINT = "or pass skip_bad=True to leave such examples out (they are counted in DetectionSource.skipped)"


class ProblemLog:
    """Raises on the first problem, or (``skip_bad=True``) records it so the reader can leave it out."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self._problems: list[Problem] = []

    def report(self, error: BadExampleError | MissingFileError) -> None:
        """Raise ``error`` unless bad examples are skipped, in which case remember it."""
        if not self.skip_bad:
            raise error
        self._problems.append(Problem(error.reason, error.path, str(error)))

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(self._problems)

    @property
    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(p.reason for p in self._problems))

    def log_summary(self, name: str, num_kept: int) -> None:
        """Log once, at the end of construction, how much was left out and why."""
        if not self._problems:
            return
        summary = ", ".join(f"{reason}={count}" for reason, count in sorted(self.counts.items()))
        _LOG.warning("%s: kept %d images; skipped %s (first: %s)", name, num_kept, summary,
                     self._problems[0].message)


LARGE_IMAGE_PIXELS = 4096 * 4096
"""Images above this many pixels get a warning: a detector sees 300×300 (or its own input size), yet each copy of a
decoded image in the input pipeline costs H·W·3 bytes (H·W·12 as float32) — one 6000×6000 JPEG among small images
raised the pipeline's peak memory from 0.9 to 4.2 GB."""


def warn_large_images(images: Sequence[ParsedImage], name: str, shown: int = 3) -> list[str]:
    """One warning line per image far larger than any detector input (at most ``shown``, then a count); returns the
    lines (also logged as warnings)."""
    large = [im for im in images if im.height * im.width > LARGE_IMAGE_PIXELS]
    lines = [f"{name}: {im.path} is {im.width}x{im.height} ({im.width * im.height / 1e6:.0f} MP), far larger than "
             f"the model's input; decoding it costs about {3 * im.width * im.height * 4 / 2**30:.1f} GB as float32 in "
             "the input pipeline: resize such images beforehand to save memory" for im in large[:shown]]
    if len(large) > shown:
        lines.append(f"{name}: {len(large) - shown} more image(s) above {LARGE_IMAGE_PIXELS / 1e6:.0f} MP")
    for line in lines:
        _LOG.warning("%s", line)
    return lines


def finished_source_fields(images: Sequence[ParsedImage], log: ProblemLog, name: str, path: str,
                           num_classes: int) -> dict:
    """The ``DetectionSource`` fields every local reader ends with: the dataset of its parsed images and the
    bookkeeping of what it skipped (logged once); refuses a source left without any image, and warns of images far
    larger than any detector input."""
    log.log_summary(name, len(images))
    warn_large_images(images, name)
    if not images:
        raise BadExampleError(f"{name}: no usable image left in {path}; see the problems logged above.",
                              NO_OBJECTS, path)
    labels = np.concatenate([np.asarray(image.labels, np.int64).reshape(-1) for image in images])
    return dict(dataset=images_to_dataset(images), name=name, num_examples=len(images), skipped=log.counts,
                problems=log.problems,
                objects_per_class=tuple(int(n) for n in np.bincount(labels, minlength=num_classes)[:num_classes]),
                background_images=sum(1 for image in images if len(image.labels) == 0))


def bad(message: str, reason: str, path: str, fix: str = "") -> BadExampleError:
    """Build a ``BadExampleError`` whose message names the file, the problem and the way out."""
    fix = f"{fix}, {_SKIP_HINT}" if fix else f"Fix the file, {_SKIP_HINT}"
    return BadExampleError(f"{path}: {message}. {fix}.", reason, path)


def missing(message: str, reason: str, path: str, fix: str) -> MissingFileError:
    """Build a ``MissingFileError`` whose message names the file and the fix."""
    return MissingFileError(f"{path}: {message}. {fix}, {_SKIP_HINT}.", reason, path)


def check_validate_mode(validate: str) -> None:
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate={validate!r} is not one of {VALIDATE_MODES}.")


def _has_jpeg_end_marker(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        tail = f.read()
    return tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


def _size_by_decoding(path: str) -> tuple[int, int]:
    try:
        shape = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise bad(f"tf.io.decode_image cannot decode this image ({detail})", CORRUPT_IMAGE, path,
                  "Re-download or re-extract the image") from None
    return int(shape[0]), int(shape[1])


def image_size(path: str, validate: str) -> tuple[int, int] | None:
    """Check that the image at ``path`` exists (and, per ``validate``, decodes); return its (H, W).

    Returns ``None`` for ``validate="none"`` (the caller trusts the annotation's size).
    """
    if not os.path.isfile(path):
        raise missing("image file not found", MISSING_IMAGE, path,
                      "Check that the image folder is complete (re-extract the archive)")
    if validate == "none":
        return None
    if validate == "full":
        return _size_by_decoding(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
            fmt, mode = im.format, im.mode
    except (OSError, SyntaxError, ValueError) as e:
        raise bad(f"not a readable image ({e})", CORRUPT_IMAGE, path,
                  "Re-download or re-extract the image") from None
    if fmt == "JPEG" and mode in ("RGB", "L") and _has_jpeg_end_marker(path):
        return height, width
    return _size_by_decoding(path)


def check_box(box: Sequence[float], height: int, width: int, path: str, what: str) -> BadExampleError | None:
    """Return an error for a zero-area box or one outside the image (pixel corners), else ``None``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        return bad(f"{what} has zero or negative area (pixel corners {x0:g}, {y0:g}, {x1:g}, {y1:g})",
                   DEGENERATE_BOX, path, "Correct or remove the object")
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        return bad(f"{what} lies outside the {width}x{height} image (pixel corners {x0:g}, {y0:g}, {x1:g}, "
                   f"{y1:g})", BOX_OUTSIDE_IMAGE, path, "Correct the box")
    return None
