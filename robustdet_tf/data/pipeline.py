"""From a source dataset (the example contract) to model-ready batches, in one place.

Why one place: training, adversarial training and evaluation must see identically prepared pixels and targets;
the differences (augmentation, difficult objects, shuffling, repetition) are switches here, not separate code.

Source contract (what ``data/voc.py``, ``data/coco.py`` and ``data/shapes.py`` produce), one unbatched dict per
image: ``image`` uint8 [H, W, 3] RGB, ``boxes`` float32 [n, 4] rel_xyxy, ``labels`` int32 [n] (0-based),
``difficult`` bool [n], ``image_id`` string, ``original_size`` int32 [2] (H, W).

Batches are ``(images, targets)``: images float32 [B, S, S, 3] in pixel space, targets padded dense tensors
``boxes`` [B, N, 4] and ``labels`` [B, N] int32 with -1 marking padding (N = ``max_boxes``).  An image with more
than N objects keeps its first N (in source order, after augmentation in training) and silently loses the rest;
for evaluation choose N at least as large as the dataset's largest object count (VOC and COCO images can hold
several dozen objects; the default 100 covers both), since a truncated ground truth changes the metric.

Determinism and resumption.  Training streams are deterministic for a given ``seed``: epoch ``e`` is shuffled
with a seed derived from (seed, stream, e), example number ``k`` of the stream (counted over epochs) is augmented
with a stateless seed derived from (seed, stream, k), and all maps are ``deterministic=True``.  Hence the stream is
a pure function of (source, seed, stream) and position ``k`` can be re-entered without replaying the past:
``start_step=s`` starts at example ``k = s * batch_size`` by skipping whole epochs for free and skipping the
remainder inside one epoch (which reads, but does not augment, at most one epoch of source elements).  Skipping
whole epochs needs the epoch size, the number of source images with at least one non-difficult object; give it as
``num_examples`` or it is counted once by reading the source.  This replaces checkpointing the tf.data iterator,
whose state would include the shuffle buffer of decoded images.

Each epoch's shuffle gets its seed as a tensor computed inside the epoch's ``flat_map`` function; the stream does
not depend on ``tf.random.set_seed`` (checked with TF 2.21).
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from robustdet_tf.behaviour import REFERENCE
from robustdet_tf.data import augment

AUTOTUNE = tf.data.AUTOTUNE
_SEED_WORD = 0x7E1D  # second word of the base stateless seed; only separates the pipeline's RNG streams


def _deterministic(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def _check_source(source: tf.data.Dataset, needed: tuple[str, ...]) -> None:
    spec = source.element_spec
    if not isinstance(spec, dict):
        raise TypeError(
            "pipeline: the source dataset must yield one dict per image (the example contract: image, boxes, labels, "
            f"difficult, image_id, original_size); got elements of type {spec!r}. Build it with data/voc.py, "
            "data/coco.py or data/shapes.py, or map your dataset to that dict."
        )
    missing = [key for key in needed if key not in spec]
    if missing:
        raise KeyError(
            f"pipeline: the source dataset's elements lack {missing}; it yields keys {sorted(spec)}. "
            "Add them in the source's map (see the example contract in robustdet_tf/data/pipeline.py)."
        )
    if spec["image"].shape.rank not in (None, 3):
        raise ValueError(
            f"pipeline: source 'image' must be unbatched [H, W, 3], got shape {spec['image'].shape}; "
            "do not batch the source dataset."
        )


def _pad_targets(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int, **extra: tf.Tensor) -> dict[str, tf.Tensor]:
    """Truncate to the first ``max_boxes`` objects, then pad (boxes 0, labels -1, booleans False)."""
    boxes = boxes[:max_boxes]
    count = tf.shape(boxes)[0]
    pad = max_boxes - count
    out = {
        "boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [max_boxes, 4]),
        "labels": tf.ensure_shape(
            tf.pad(tf.cast(labels[:max_boxes], tf.int32), [[0, pad]], constant_values=-1), [max_boxes]
        ),
    }
    for name, value in extra.items():
        out[name] = tf.ensure_shape(tf.pad(value[:max_boxes], [[0, pad]]), [max_boxes])
    return out


def _drop_difficult(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    keep = tf.logical_not(tf.cast(example["difficult"], tf.bool))
    return {
        "image": example["image"],
        "boxes": tf.boolean_mask(example["boxes"], keep),
        "labels": tf.boolean_mask(example["labels"], keep),
    }


def _has_objects(example: dict[str, tf.Tensor]) -> tf.Tensor:
    return tf.size(example["labels"]) > 0


def count_training_examples(source: tf.data.Dataset) -> int:
    """Number of source images that keep at least one object after dropping difficult ones (reads the source)."""
    _check_source(source, ("image", "boxes", "labels", "difficult"))
    kept = source.map(_drop_difficult).filter(_has_objects)
    return int(kept.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def train_batches(
    source: tf.data.Dataset,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    stream: int = 0,
    max_boxes: int = 100,
    shuffle_buffer: int = 512,
    augment_examples: bool = True,
    chain: str = REFERENCE,
    num_parallel_calls: int | None = AUTOTUNE,
    prefetch: int | None = AUTOTUNE,
    cache: bool | str = False,
    drop_remainder: bool = True,
    repeat: bool = True,
    start_step: int = 0,
    num_examples: int | None = None,
) -> tf.data.Dataset:
    """Training batches ``(images [B,S,S,3] float32, {"boxes" [B,N,4], "labels" [B,N]})``.

    Difficult objects are dropped (reference ``keep_difficult=False``) and images left without objects are skipped;
    each example then goes through ``augment.ssd_augment`` (or only the resize when ``augment_examples=False``).

    Args:
      source: unbatched dataset in the example contract.
      image_size: side of the square network input.
      seed, stream: the stream is a pure function of (source, seed, stream); ``two_streams`` uses streams 0 and 1.
      max_boxes: N, the padded object dimension (extra objects are truncated, see the module docstring).
      shuffle_buffer: elements held by the per-epoch shuffle (decoded images: mind the memory); 0 or 1 = no shuffle.
      chain: ``"reference"`` or ``"corrected"`` augmentation, passed to ``ssd_augment``.
      cache: False, True (in memory) or a file path prefix; caches the filtered source before shuffling.
      drop_remainder: drop the last incomplete batch (only matters with ``repeat=False``).
      repeat: infinite stream of epochs (True) or a single epoch (False).
      start_step: resume at batch number ``start_step`` (see the module docstring).
      num_examples: epoch size (images left after dropping those without a non-difficult object), to skip whole
        epochs without reading them; counted from the source if needed.  A wrong value still gives a valid stream,
        but not the continuation of the uninterrupted one.
    """
    _check_source(source, ("image", "boxes", "labels", "difficult"))
    if batch_size < 1 or max_boxes < 1 or image_size < 1:
        raise ValueError(
            "train_batches: batch_size, max_boxes and image_size must be >= 1, "
            f"got {batch_size}, {max_boxes}, {image_size}."
        )
    if start_step < 0:
        raise ValueError(f"train_batches: start_step must be >= 0, got {start_step}.")
    stream_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, _SEED_WORD], tf.int64), stream)
    examples, fill = trainable_examples(source, num_parallel_calls=num_parallel_calls, cache=cache)
    start_example = start_step * batch_size
    if start_example and num_examples is None:
        num_examples = count_training_examples(source)
    ordered = ordered_stream(examples, stream_seed, shuffle_buffer=shuffle_buffer, start_example=start_example,
                             num_examples=num_examples, repeat=repeat)
    if fill is not None:
        ordered = fill.concatenate(ordered)
    ordered = ordered.enumerate(start=start_example)

    def prepare(position, example):
        return prepared_example(example, tf.random.experimental.stateless_fold_in(stream_seed, position),
                                image_size=image_size, max_boxes=max_boxes, augment_examples=augment_examples,
                                chain=chain)

    batches = ordered.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    batches = batches.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch is not None and prefetch != 0:
        batches = batches.prefetch(prefetch)
    return _deterministic(batches)


def trainable_examples(source: tf.data.Dataset, *, num_parallel_calls: int | None = AUTOTUNE,
                       cache: bool | str = False) -> tuple[tf.data.Dataset, tf.data.Dataset | None]:
    """The examples training sees: difficult objects dropped, images left without objects skipped, optionally
    cached.  Returns ``(examples, fill)``: ``fill`` (a cached source only) is one pass that fills the cache and
    yields nothing, to run before the stream starts."""
    examples = source.map(_drop_difficult, num_parallel_calls=num_parallel_calls, deterministic=True)
    examples = examples.filter(_has_objects)
    if cache is False:
        return examples, None
    examples = examples.cache("" if cache is True else str(cache))
    # One complete pass fills the cache before the stream starts.  Without it the first epoch fills the cache, and a
    # run that stops inside that epoch (short runs; the slowly renewed attacked stream) leaves a partial cache
    # behind, which tf.data discards with a warning.
    return examples, examples.filter(lambda example: False)


def ordered_stream(examples: tf.data.Dataset, stream_seed: tf.Tensor, *, shuffle_buffer: int = 512,
                   start_example: int = 0, num_examples: int | None = None, repeat: bool = True) -> tf.data.Dataset:
    """The examples in the order of the stream ``stream_seed``: epochs shuffled as a pure function of (seed,
    stream, epoch), the stream starting at example number ``start_example`` (whole epochs skipped unread, which
    needs ``num_examples``, the epoch size)."""
    if start_example and num_examples == 0:
        raise ValueError("train_batches: the source has no image with a non-difficult object; nothing to train on.")
    first_epoch, offset = divmod(start_example, num_examples) if start_example else (0, 0)

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        shuffled = examples
        if shuffle_buffer > 1:
            words = tf.random.experimental.stateless_fold_in(stream_seed, index)
            shuffle_seed = tf.math.floormod(words[0] * 1_000_003 + words[1], 2**31 - 1)
            # The order must depend on (seed, stream, epoch) only.  With a global seed set (keras.utils.
            # set_random_seed), tf.random_seed.get_seed would also compare this tensor seed with 0 in Python and
            # fail while tracing; clearing the graph-level seed of this function graph avoids both.
            tf.compat.v1.get_default_graph().seed = None
            shuffled = examples.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
        return shuffled.skip(tf.where(tf.equal(index, first_epoch), tf.constant(offset, tf.int64), 0))

    epochs = tf.data.Dataset.counter(first_epoch) if repeat else tf.data.Dataset.range(first_epoch, first_epoch + 1)
    return epochs.flat_map(epoch)


def prepared_example(example: dict[str, tf.Tensor], example_seed: tf.Tensor, *, image_size: int, max_boxes: int,
                     augment_examples: bool = True, chain: str = REFERENCE) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """One training example as the network takes it: augmented with ``example_seed`` (``augment.ssd_augment``) or
    only resized, targets padded to ``max_boxes``."""
    if augment_examples:
        image, boxes, labels = augment.ssd_augment(
            example["image"], example["boxes"], example["labels"], example_seed, image_size, chain=chain
        )
    else:
        image = augment.resize_image(example["image"], image_size)
        boxes, labels = example["boxes"], example["labels"]
    return image, _pad_targets(boxes, labels, max_boxes)

def eval_batches(
    source: tf.data.Dataset,
    *,
    image_size: int,
    batch_size: int,
    max_boxes: int = 100,
    num_parallel_calls: int | None = AUTOTUNE,
    prefetch: int | None = AUTOTUNE,
    cache: bool | str = False,
    drop_remainder: bool = False,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Evaluation batches in source order: images only resized; targets keep difficult objects.

    Targets: ``boxes`` [B,N,4], ``labels`` [B,N] (-1 padded), ``difficult`` [B,N] bool (False padded),
    ``image_id`` [B] string, ``original_size`` [B,2] int32 (H, W).
    """
    _check_source(source, ("image", "boxes", "labels", "difficult", "image_id", "original_size"))
    if batch_size < 1 or max_boxes < 1 or image_size < 1:
        raise ValueError(
            "eval_batches: batch_size, max_boxes and image_size must be >= 1, "
            f"got {batch_size}, {max_boxes}, {image_size}."
        )

    def prepare(example):
        difficult = tf.cast(example["difficult"], tf.bool)
        targets = _pad_targets(example["boxes"], example["labels"], max_boxes, difficult=difficult)
        targets["image_id"] = example["image_id"]
        targets["original_size"] = tf.cast(example["original_size"], tf.int32)
        return augment.resize_image(example["image"], image_size), targets

    batches = source.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
    if cache is not False:
        batches = batches.cache("" if cache is True else str(cache))
    if repeat:
        batches = batches.repeat()
    batches = batches.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch is not None and prefetch != 0:
        batches = batches.prefetch(prefetch)
    return _deterministic(batches)


def two_streams(source: tf.data.Dataset, *, seed: int, renew_every: int = 1, start_step: int = 0,
                **kwargs: Any) -> tf.data.Dataset:
    """Two independent, infinite training streams zipped: ``((clean_images, clean_targets), (adv_images,
    adv_targets))`` — the one input builder of adversarial training.

    RobustDet draws the clean half and the to-be-attacked half of a step from separately shuffled loaders over the
    same data (docs/reference.md#training-data), so the two halves hold different images.  Stream 0 (clean) equals
    ``train_batches(source, seed=seed, stream=0, ...)``; stream 1 has its own shuffle and augmentation seeds, and
    each of its batches is repeated ``renew_every`` times (the interleaved schedule attacks a new batch only every
    ``steps`` optimiser steps).  ``kwargs`` are those of ``train_batches`` (``batch_size`` is the per-stream batch,
    16 in the reference); ``start_step`` resumes both streams at the same optimiser step.
    """
    for forbidden in ("stream", "repeat"):
        if forbidden in kwargs:
            raise TypeError(f"two_streams: '{forbidden}' is fixed (streams 0 and 1, both infinite); do not pass it.")
    if renew_every < 1:
        raise ValueError(f"two_streams: renew_every must be >= 1, got {renew_every}.")
    clean = train_batches(source, seed=seed, stream=0, repeat=True, start_step=start_step, **kwargs)
    adversarial = train_batches(source, seed=seed, stream=1, repeat=True, start_step=start_step // renew_every,
                                **kwargs)
    if renew_every > 1:
        adversarial = adversarial.flat_map(lambda x, y: tf.data.Dataset.from_tensors((x, y)).repeat(renew_every))
        adversarial = adversarial.skip(start_step % renew_every)
    return _deterministic(tf.data.Dataset.zip((clean, adversarial)))
