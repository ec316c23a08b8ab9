"""tensorflow-datasets helpers shared by the VOC and COCO tfds readers.

One rule: nothing is downloaded or prepared unless the caller passes ``download=True``; an unprepared
dataset raises ``DatasetNotFoundError`` naming ``data_dir``, ``manual_dir`` and the archive names (without
network, tfds would otherwise retry a download for minutes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from robustdet_tf import boxes as boxes_lib
from robustdet_tf.data.contract import DatasetNotFoundError


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
    """tfds ``rel_yxyx`` -> ``boxes.BOX_FORMAT`` with corners sorted, shifted by ``pixel_offset`` pixels."""
    xyxy = boxes_lib.convert_format(tf.cast(bbox, tf.float32), "rel_yxyx", boxes_lib.BOX_FORMAT)
    shift = pixel_offset / tf.stack([tf.cast(width, tf.float32), tf.cast(height, tf.float32)])
    return tf.concat([tf.minimum(xyxy[..., :2], xyxy[..., 2:]) - shift,
                      tf.maximum(xyxy[..., :2], xyxy[..., 2:]) - shift], axis=-1)


def common_length(*tensors: tf.Tensor) -> tf.Tensor:
    """Smallest leading dimension of ``tensors`` (equal for real tfds data; not for mock data)."""
    return tf.reduce_min(tf.stack([tf.shape(t)[0] for t in tensors]))


def tfds_objects(example: dict, flag: str, pixel_offset: float) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(image, boxes, labels, flags)`` of a tfds detection example: boxes in ``boxes.BOX_FORMAT`` with sorted
    corners, every field cut to the objects' common length; ``flag`` names the per-object bool (``is_difficult``,
    ``is_crowd``)."""
    image = example["image"]
    objects = example["objects"]
    n = common_length(objects["bbox"], objects["label"], objects[flag])
    shape = tf.shape(image)
    boxes = sorted_tfds_boxes(objects["bbox"][:n], shape[0], shape[1], pixel_offset=pixel_offset)
    return image, boxes, tf.cast(objects["label"][:n], tf.int32), tf.cast(objects[flag][:n], tf.bool)
