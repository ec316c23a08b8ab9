"""The example contract: what every dataset reader returns.

The VOC and COCO readers (``voc.py``, ``coco.py``) all produce the same *example contract*, so the batching
pipeline and augmentation never need to know where an image came from.  A reader returns a
:class:`DetectionSource`, whose ``dataset`` is a ``tf.data.Dataset`` of unbatched dicts::

    image          uint8   [H, W, 3]  RGB
    boxes          float32 [n, 4]     rel_xyxy (x_min, y_min, x_max, y_max divided by W, H)
    labels         int32   [n]        0-based object class (the network's class is label + 1)
    difficult      bool    [n]        VOC "difficult" flag (COCO: see coco.py for crowd boxes)
    image_id       string  []
    original_size  int32   [2]        (H, W) of the decoded image

The errors a reader raises for bad input live here too (``validation.py`` builds them, ``tfds_helpers.py``
raises ``DatasetNotFoundError``), so callers catch them from one place.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import tensorflow as tf

EXAMPLE_SPEC = {
    "image": tf.TensorSpec([None, None, 3], tf.uint8),
    "boxes": tf.TensorSpec([None, 4], tf.float32),
    "labels": tf.TensorSpec([None], tf.int32),
    "difficult": tf.TensorSpec([None], tf.bool),
    "image_id": tf.TensorSpec([], tf.string),
    "original_size": tf.TensorSpec([2], tf.int32),
}
"""The element spec of every reader's dataset (the example contract)."""


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
      objects_per_class: objects of each class (difficult ones included), when the reader knows them without
        iterating the dataset (the local readers parse every annotation first); ``None`` otherwise.
      background_images: images without any object, known under the same condition.
    """

    dataset: tf.data.Dataset
    name: str
    class_names: tuple[str, ...]
    num_examples: int | None = None
    skipped: Mapping[str, int] = dataclasses.field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    objects_per_class: tuple[int, ...] | None = None
    background_images: int | None = None


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


BACKGROUND_MODES = ("keep", "drop")
"""What a reader does with an image whose annotation lists no object: keep it (a background-only image, valid for
training and evaluation, as COCO has them) or drop it (the reference's COCO selection)."""


def check_background_mode(background_images: str) -> None:
    if background_images not in BACKGROUND_MODES:
        raise ValueError(f"background_images={background_images!r} is not one of {BACKGROUND_MODES} "
                         "(config.data.background_images).")


def _decode(path: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    # decode_image: JPEG (decoded exactly as decode_jpeg does), PNG, BMP or GIF, whatever the file extension says.
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
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


def check_labels_fit(source: DetectionSource, num_classes: int, class_names: Sequence[str] | None,
                     what: str) -> None:
    """Refuse, before any step runs, a source whose labels the model cannot hold or names differently.

    ``num_classes`` counts the background; ``class_names`` is the model's saved label map (``None``: none saved).
    """
    names = tuple(source.class_names)
    if len(names) + 1 > int(num_classes):
        raise ValueError(
            f"{source.name} has {len(names)} classes but {what} has num_classes={num_classes} ({int(num_classes) - 1} "
            f"object classes + background): set config.model.num_classes={len(names) + 1}, or list the classes to "
            "read in config.data.class_names."
        )
    lower = lambda seq: tuple(str(n).strip().lower() for n in seq)  # noqa: E731
    if class_names is not None and lower(class_names) != lower(names):
        raise ValueError(
            f"{source.name} has the classes {list(names)} but {what} was built for {list(class_names)}: give the "
            "model's classes in config.data.class_names, or use a model trained on these classes."
        )


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
    known = all(s.objects_per_class is not None and s.background_images is not None for s in sources)
    return DetectionSource(dataset=dataset, name=name, class_names=sources[0].class_names,
                           num_examples=total, skipped=dict(counts),
                           problems=tuple(p for s in sources for p in s.problems),
                           objects_per_class=tuple(map(sum, zip(*(s.objects_per_class for s in sources))))
                           if known else None,
                           background_images=sum(s.background_images for s in sources) if known else None)
