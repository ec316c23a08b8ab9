"""Tests of the batching pipeline: shapes and padding, difficult handling, determinism, resumption, two streams."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.data import contract, pipeline
from robustdet_tf.data.shapes import shapes_dataset

DIFFICULT_LABEL = 7  # only difficult objects carry this label in the test source
ALL_DIFFICULT_IMAGE = 5
NUM_IMAGES = 10


def _source_examples():
    """Ten images of varying size; image i is filled with grey level 10 * (i + 1) and has (i % 3) + 1 objects."""
    examples = []
    for i in range(NUM_IMAGES):
        height, width = 20 + (i % 3) * 4, 24
        n = (i % 3) + 1
        boxes = np.array([[0.1 + 0.1 * k, 0.1, 0.4 + 0.1 * k, 0.6] for k in range(n)], np.float32)
        labels = np.array([(i + k) % 5 for k in range(n)], np.int32)
        difficult = np.zeros(n, bool)
        if i == 3:  # one easy and one difficult object
            boxes = np.concatenate([boxes[:1], [[0.5, 0.5, 0.9, 0.9]]]).astype(np.float32)
            labels = np.array([labels[0], DIFFICULT_LABEL], np.int32)
            difficult = np.array([False, True])
        if i == ALL_DIFFICULT_IMAGE:
            labels = np.full(n, DIFFICULT_LABEL, np.int32)
            difficult = np.ones(n, bool)
        examples.append(
            {
                "image": np.full((height, width, 3), 10 * (i + 1), np.uint8),
                "boxes": boxes,
                "labels": labels,
                "difficult": difficult,
                "image_id": f"img{i}",
                "original_size": np.array([height, width], np.int32),
            }
        )
    return examples


def _source():
    signature = contract.EXAMPLE_SPEC
    return tf.data.Dataset.from_generator(_source_examples, output_signature=signature)


def _batches(dataset, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), batch) for batch in dataset.take(count)]


def _assert_same(a, b):
    for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
        np.testing.assert_array_equal(x, y)


def _train(**kwargs):
    options = dict(image_size=16, batch_size=4, seed=1, max_boxes=5, shuffle_buffer=8)
    options.update(kwargs)
    return pipeline.train_batches(_source(), **options)


def test_training_batches_shapes_dtypes_and_padding():
    for images, targets in _batches(_train(), 5):
        assert images.shape == (4, 16, 16, 3) and images.dtype == np.float32
        assert targets["boxes"].shape == (4, 5, 4) and targets["boxes"].dtype == np.float32
        assert targets["labels"].shape == (4, 5) and targets["labels"].dtype == np.int32
        assert set(targets) == {"boxes", "labels"}
        valid = targets["labels"] >= 0
        assert np.all(valid.sum(axis=1) >= 1)
        # Padding is contiguous at the end, with -1 labels and zero boxes.
        for row in valid:
            assert not np.any(row[np.argmin(row) :]) or row.all()
        assert np.all(targets["boxes"][~valid] == 0.0)
        assert np.all(targets["boxes"][valid] >= 0.0) and np.all(targets["boxes"][valid] <= 1.0)
        assert np.all(targets["boxes"][valid][:, 2] > targets["boxes"][valid][:, 0])


def test_training_drops_difficult_objects_and_empty_images():
    one_epoch = _train(augment_examples=False, repeat=False, drop_remainder=False, shuffle_buffer=1)
    seen_levels = []
    for images, targets in _batches(one_epoch, 10):
        assert not np.any(targets["labels"] == DIFFICULT_LABEL)
        seen_levels += [int(round(v)) for v in images[:, 0, 0, 0]]
    expected = [10 * (i + 1) for i in range(NUM_IMAGES) if i != ALL_DIFFICULT_IMAGE]
    assert seen_levels == expected  # no shuffle, no augmentation: source order minus the all-difficult image
    assert pipeline.count_training_examples(_source()) == NUM_IMAGES - 1


def test_eval_keeps_difficult_ids_sizes_and_order():
    batches = _batches(pipeline.eval_batches(_source(), image_size=12, batch_size=4, max_boxes=3), 5)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]  # no drop_remainder in evaluation
    images = np.concatenate([b[0] for b in batches])
    targets = {k: np.concatenate([b[1][k] for b in batches]) for k in batches[0][1]}
    source = _source_examples()
    assert set(targets) == {"boxes", "labels", "difficult", "image_id", "original_size"}
    assert targets["difficult"].dtype == bool and targets["original_size"].dtype == np.int32
    for i, example in enumerate(source):
        np.testing.assert_allclose(images[i], 10 * (i + 1))  # only resized
        n = len(example["labels"])
        np.testing.assert_array_equal(targets["labels"][i, :n], example["labels"])
        np.testing.assert_array_equal(targets["labels"][i, n:], -1)
        np.testing.assert_array_equal(targets["difficult"][i, :n], example["difficult"])
        assert not targets["difficult"][i, n:].any()
        np.testing.assert_allclose(targets["boxes"][i, :n], example["boxes"])
        assert targets["image_id"][i] == example["image_id"].encode()
        np.testing.assert_array_equal(targets["original_size"][i], example["original_size"])
    assert targets["difficult"][3].tolist() == [False, True, False]


def test_max_boxes_truncates_to_the_first_objects():
    batches = _batches(pipeline.eval_batches(_source(), image_size=12, batch_size=10, max_boxes=1), 1)
    labels = batches[0][1]["labels"]
    assert labels.shape == (10, 1)
    np.testing.assert_array_equal(labels[:, 0], [example["labels"][0] for example in _source_examples()])


def test_training_stream_is_deterministic_per_seed():
    a = _batches(_train(seed=4), 4)
    b = _batches(_train(seed=4), 4)
    c = _batches(_train(seed=5), 4)
    _assert_same(a, b)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_cache_does_not_change_the_stream():
    _assert_same(_batches(_train(seed=2, cache=True), 4), _batches(_train(seed=2), 4))


@pytest.mark.parametrize("num_examples", [NUM_IMAGES - 1, None])
def test_start_step_resumes_the_same_stream(num_examples):
    fresh = _batches(_train(seed=3), 7)  # 9 training images, batch 4: batches 3..6 cross into epochs 1..3
    resumed = _batches(_train(seed=3, start_step=3, num_examples=num_examples), 4)
    _assert_same(fresh[3:7], resumed)


def test_every_epoch_is_a_new_permutation_of_all_training_images():
    stream = _train(seed=6, augment_examples=False, shuffle_buffer=16)
    levels = [int(round(v)) for images, _ in _batches(stream, 9) for v in images[:, 0, 0, 0]]
    epochs = [levels[k * 9 : (k + 1) * 9] for k in range(4)]
    expected = sorted(10 * (i + 1) for i in range(NUM_IMAGES) if i != ALL_DIFFICULT_IMAGE)
    for epoch in epochs:
        assert sorted(epoch) == expected
    assert len({tuple(epoch) for epoch in epochs}) > 1


def test_two_streams_differ_and_are_each_deterministic():
    source = shapes_dataset(16, 32, seed=0)
    options = dict(seed=7, image_size=24, batch_size=2, max_boxes=6, shuffle_buffer=16)
    first = _batches(pipeline.two_streams(source, **options), 3)
    again = _batches(pipeline.two_streams(source, **options), 3)
    _assert_same(first, again)
    for (clean_images, clean_targets), (adv_images, adv_targets) in first:
        assert clean_images.shape == adv_images.shape == (2, 24, 24, 3)
        assert set(clean_targets) == set(adv_targets) == {"boxes", "labels"}
        assert not np.array_equal(clean_images, adv_images)
    single = _batches(pipeline.train_batches(source, stream=0, **options), 3)
    _assert_same([batch[0] for batch in first], single)
    with pytest.raises(TypeError, match="stream"):
        pipeline.two_streams(source, stream=3, **options)


def test_bad_sources_raise_clear_errors():
    with pytest.raises(ValueError, match="unbatched"):
        pipeline.train_batches(_source().padded_batch(2), image_size=8, batch_size=2, seed=0)
    with pytest.raises(TypeError, match="one dict per image"):
        pipeline.eval_batches(tf.data.Dataset.range(3), image_size=8, batch_size=2)
    missing = _source().map(lambda ex: {k: v for k, v in ex.items() if k != "difficult"})
    with pytest.raises(KeyError, match="difficult"):
        pipeline.train_batches(missing, image_size=8, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="start_step"):
        pipeline.train_batches(_source(), image_size=8, batch_size=2, seed=0, start_step=-1)


def test_stream_ignores_the_global_seed_even_when_it_is_zero():
    """keras.utils.set_random_seed(0) (as training scripts do) must neither break the shuffle nor change it."""
    unseeded = _batches(_train(seed=8), 3)
    try:
        tf.random.set_seed(0)
        seeded = _batches(_train(seed=8), 3)
    finally:
        tf.random.set_seed(None)
    _assert_same(unseeded, seeded)
