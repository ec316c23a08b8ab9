"""What every dataset reader returns, and the checks they share.

The VOC and COCO readers (``voc.py``, ``coco.py``) all produce the same *example contract*, so the batching
pipeline and augmentation never need to know where an image came from.  A reader returns a
:class:`DetectionSource`, whose ``dataset`` is a ``tf.data.Dataset`` of unbatched dicts::

    image          uint8   [H, W, 3]  RGB
    boxes          float32 [n, 4]     rel_xyxy (x_min, y_min, x_max, y_max divided by W, H)
    labels         int32   [n]        0-based object class (the network's class is label + 1)
    difficult      bool    [n]        VOC "difficult" flag (COCO: see coco.py for crowd boxes)
    image_id       string  []
    original_size  int32   [2]        (H, W) of the decoded image

Bad input policy (shared by the local readers):

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

  Whatever the mode, the tf.data map asserts that the decoded size equals the size the boxes were
  normalised with, and the assertion prints the file path.

The tfds helpers at the end share one rule: nothing is downloaded or prepared unless the caller passes
``download=True``; an unprepared dataset raises ``DatasetNotFoundError`` naming ``data_dir``,
``manual_dir`` and the archive names (without network, tfds would otherwise retry a download for minutes).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

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

EXAMPLE_SPEC = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "labels": tf.TensorSpec([None], tf.int32),
    "difficult": tf.TensorSpec([None], tf.bool),
    "image_id": tf.TensorSpec([], tf.string),
    "original_size": tf.TensorSpec([2], tf.int32),
}
"""The element spec of every reader's dataset (the example contract)."""

_SKIP_HINT = "or pass skip_bad=True to leave such examples out (they are counted in DetectionSource.skipped)"


class BadExampleError(ValueError):
    """An annotation or image that cannot be used as it is; ``reason`` says which check failed."""

    def __init__(self, message: str, reason: str, path: str):
        super().__init__(message)
        self.reason = reason
        self.path = path


class MissingFileError(FileNotFoundError):
    """A file an annotation refers to (image, XML) does not exist."""

    def __init__(self, message: str, reason: str, path: str):
        super().__init__(message)
        self.reason = reason
        self.path = path


class DatasetNotFoundError(FileNotFoundError):
    """The dataset itself (root folder, split list, annotation json, prepared tfds data) is missing."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One skipped image or object: why, which file, and the message the error would have had."""

    reason: str
    path: str
    message: str


@dataclasses.dataclass(frozen=True)
class DetectionSource:
    """A dataset following the example contract, with what the reader learned while building it.

    Attributes:
      dataset: unbatched ``tf.data.Dataset`` of dicts matching ``EXAMPLE_SPEC``.
      name: human-readable description, e.g. ``"VOC2007 test (local)"``.
      class_names: object class names indexed by ``labels``.
      num_examples: number of images the dataset yields, when known without iterating it.
      skipped: number of skipped images/objects per reason (empty unless ``skip_bad=True``).
      problems: the individual skipped items.
    """

    dataset: tf.data.Dataset
    name: str
    class_names: tuple[str, ...]
    num_examples: int | None = None
    skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
    problems: tuple[Problem, ...] = ()


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
        shape = tf.io.decode_jpeg(tf.io.read_file(path), channels=3).shape
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise bad(f"tf.io.decode_jpeg cannot decode this image ({detail})", CORRUPT_IMAGE, path,
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
    from PIL import Image  # pylint: disable=import-outside-toplevel

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


@dataclasses.dataclass
class ParsedImage:
    """One image as collected by a reader before the tf.data pipeline is built."""

    path: str
    image_id: str
    height: int
    width: int
    boxes: np.ndarray  # [n, 4] float32 rel_xyxy
    labels: np.ndarray  # [n] int32
    difficult: np.ndarray  # [n] bool


def _decode(path: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    decoded = tf.shape(image)[:2]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(decoded, size)),
        ["decoded image size differs from the size its boxes were normalised with (the annotation's size "
         "is wrong; build the source with validate='header'). File, decoded HxW, annotated HxW:",
         path, decoded, size], summarize=4)
    with tf.control_dependencies([check]):
        return tf.identity(image)


def images_to_dataset(images: Iterable[ParsedImage]) -> tf.data.Dataset:
    """Turn parsed annotations into the contract's tf.data pipeline; only JPEG decoding happens per epoch."""
    images = list(images)
    row_lengths = np.array([len(im.labels) for im in images], np.int64)

    def ragged(parts: list[np.ndarray], dtype, tail: tuple[int, ...]) -> tf.RaggedTensor:
        flat = np.concatenate(parts).astype(dtype) if parts else np.zeros((0,) + tail, dtype)
        return tf.RaggedTensor.from_row_lengths(flat.reshape((-1,) + tail), row_lengths)

    table = {
        "path": tf.constant([im.path for im in images], tf.string, shape=[len(images)]),
        "image_id": tf.constant([im.image_id for im in images], tf.string, shape=[len(images)]),
        "size": tf.constant(np.array([(im.height, im.width) for im in images], np.int32).reshape(-1, 2)),
        "boxes": ragged([im.boxes for im in images], np.float32, (4,)),
        "labels": ragged([im.labels for im in images], np.int32, ()),
        "difficult": ragged([im.difficult for im in images], np.bool_, ()),
    }

    def load(row):
        image = _decode(row["path"], row["size"])
        return make_example(image, row["boxes"], row["labels"], row["difficult"], row["image_id"])

    return tf.data.Dataset.from_tensor_slices(table).map(load, num_parallel_calls=tf.data.AUTOTUNE)


def make_example(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, difficult: tf.Tensor,
                 image_id: tf.Tensor) -> dict[str, tf.Tensor]:
    """Assemble one contract example with the exact dtypes and static shapes of ``EXAMPLE_SPEC``."""
    example = {
        "image": tf.cast(image, tf.uint8),
        "boxes": tf.cast(boxes, tf.float32),
        "labels": tf.cast(labels, tf.int32),
        "difficult": tf.cast(difficult, tf.bool),
        "image_id": tf.cast(image_id, tf.string),
        "original_size": tf.shape(image, out_type=tf.int32)[:2],
    }
    return {k: tf.ensure_shape(v, EXAMPLE_SPEC[k].shape) for k, v in example.items()}


def concatenate(sources: Sequence[DetectionSource], name: str) -> DetectionSource:
    """Chain several sources (e.g. VOC2007 + VOC2012 trainval) into one, merging their bookkeeping."""
    if not sources:
        raise ValueError("concatenate() needs at least one source.")
    names = {s.class_names for s in sources}
    if len(names) != 1:
        raise ValueError(f"Cannot concatenate sources with different class lists: {[s.name for s in sources]}.")
    dataset = sources[0].dataset
    for s in sources[1:]:
        dataset = dataset.concatenate(s.dataset)
    counts: collections.Counter = collections.Counter()
    for s in sources:
        counts.update(s.skipped)
    sizes = [s.num_examples for s in sources]
    total = None if any(n is None for n in sizes) else sum(sizes)
    return DetectionSource(dataset=dataset, name=name, class_names=sources[0].class_names,
                           num_examples=total, skipped=dict(counts),
                           problems=tuple(p for s in sources for p in s.problems))


def tfds_not_prepared_error(name: str, data_dir: str | None, archives: Sequence[str]) -> DatasetNotFoundError:
    """The error for a tfds dataset that has not been prepared (we never download implicitly)."""
    where = data_dir or "the default tfds data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
    return DatasetNotFoundError(
        f"tfds dataset {name} is not prepared in {where}. Either pass data_dir= pointing at a prepared "
        f"copy, or put the official archives ({', '.join(archives)}) under exactly these names in a folder "
        "and call again with manual_dir=<that folder> and download=True to prepare it offline "
        "(download=True without manual_dir downloads from the internet).")


def tfds_builder(name: str, data_dir: str | None, manual_dir: str | None, download: bool,
                 archives: Sequence[str]):
    """A tfds builder, prepared only if the caller asked for it; never triggers an implicit download."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        config = None
        if manual_dir is not None:
            absent = [a for a in archives if not os.path.isfile(os.path.join(manual_dir, a))]
            if absent:
                raise DatasetNotFoundError(
                    f"manual_dir {manual_dir} lacks {', '.join(absent)}; tfds {name} needs all of "
                    f"{', '.join(archives)} there under exactly these names.")
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(download_config=config)
    return builder


def tfds_as_dataset(builder, split: str, name: str, data_dir: str | None, archives: Sequence[str]):
    """``builder.as_dataset`` with tfds' "could not find data" assertion turned into a clear error."""
    try:
        return builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        if "could not find data" in str(e):
            raise tfds_not_prepared_error(name, data_dir, archives) from None
        raise


def tfds_num_examples(builder, split: str) -> int | None:
    """Number of examples tfds recorded for ``split``, or ``None`` when unknown (e.g. under mock data)."""
    try:
        n = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
    return n or None


def sorted_tfds_boxes(bbox: tf.Tensor, height: tf.Tensor, width: tf.Tensor,
                      pixel_offset: float) -> tf.Tensor:
    """tfds relative yxyx -> rel_xyxy with corners sorted, shifted by ``pixel_offset`` pixels."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.cast(bbox, tf.float32), num=4, axis=-1)
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    dx, dy = pixel_offset / w, pixel_offset / h
    return tf.stack([tf.minimum(xmin, xmax) - dx, tf.minimum(ymin, ymax) - dy,
                     tf.maximum(xmin, xmax) - dx, tf.maximum(ymin, ymax) - dy], axis=-1)


def common_length(*tensors: tf.Tensor) -> tf.Tensor:
    """Smallest leading dimension of ``tensors`` (equal for real tfds data; not for mock data)."""
    return tf.reduce_min(tf.stack([tf.shape(t)[0] for t in tensors]))
