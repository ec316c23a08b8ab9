"""Tests of the example contract: exact dtypes and shapes, the decode-size assertion, concatenation bookkeeping."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from robustdet_tf.data import contract


def _jpeg(path, height, width, value=90):
    buf = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(buf, format="JPEG", quality=95)
    path.write_bytes(buf.getvalue())
    return str(path)


def _parsed(path, image_id, height, width, n):
    return contract.ParsedImage(path=path, image_id=image_id, height=height, width=width,
                                boxes=np.tile(np.array([[0.1, 0.2, 0.5, 0.6]], np.float32), (n, 1)),
                                labels=np.arange(n, dtype=np.int32), difficult=np.arange(n) % 2 == 1)


def _source(dataset, name, classes=("a", "b"), n=None, skipped=None, problems=()):
    return contract.DetectionSource(dataset=dataset, name=name, class_names=classes, num_examples=n,
                                    skipped=skipped or {}, problems=problems)


def test_make_example_casts_to_the_spec():
    example = contract.make_example(tf.zeros([5, 7, 3], tf.float32), tf.zeros([2, 4], tf.float64),
                                    tf.constant([1, 0], tf.int64), tf.constant([0, 1]), tf.constant("x"))
    for key, spec in contract.EXAMPLE_SPEC.items():
        assert example[key].dtype == spec.dtype, key
        assert spec.shape.is_compatible_with(example[key].shape), key
    np.testing.assert_array_equal(example["original_size"], [5, 7])
    np.testing.assert_array_equal(example["difficult"], [False, True])


def test_make_example_refuses_a_wrong_rank():
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=r"\[\?,\?,3\]"):
        contract.make_example(tf.zeros([5, 7], tf.uint8), tf.zeros([0, 4]), tf.zeros([0], tf.int32),
                              tf.zeros([0], tf.bool), tf.constant("x"))


def test_images_to_dataset_keeps_rows_in_order_with_ragged_objects(tmp_path):
    images = [_parsed(_jpeg(tmp_path / "a.jpg", 8, 12), "a", 8, 12, 2),
              _parsed(_jpeg(tmp_path / "b.jpg", 10, 6), "b", 10, 6, 0),
              _parsed(_jpeg(tmp_path / "c.jpg", 4, 4), "c", 4, 4, 3)]
    dataset = contract.images_to_dataset(images)
    assert dataset.element_spec == contract.EXAMPLE_SPEC
    examples = list(dataset)
    assert [ex["image_id"].numpy().decode() for ex in examples] == ["a", "b", "c"]
    assert [ex["labels"].shape[0] for ex in examples] == [2, 0, 3]
    np.testing.assert_array_equal(examples[1]["original_size"], [10, 6])
    np.testing.assert_allclose(examples[2]["boxes"], images[2].boxes)
    np.testing.assert_array_equal(examples[2]["difficult"], [False, True, False])


def test_decoded_size_mismatch_names_the_file(tmp_path):
    path = _jpeg(tmp_path / "wrong.jpg", 8, 12)
    dataset = contract.images_to_dataset([_parsed(path, "w", 9, 12, 1)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong.jpg"):
        next(iter(dataset))


def test_concatenate_chains_data_and_merges_bookkeeping():
    problem = contract.Problem("corrupt_image", "/x.jpg", "bad")
    a = _source(tf.data.Dataset.range(2), "A", n=2, skipped={"corrupt_image": 1}, problems=(problem,))
    b = _source(tf.data.Dataset.range(5, 8), "B", n=3, skipped={"corrupt_image": 2, "no_objects": 1})
    merged = contract.concatenate([a, b], "A+B")
    assert [int(x) for x in merged.dataset] == [0, 1, 5, 6, 7]
    assert merged.num_examples == 5 and merged.name == "A+B"
    assert merged.skipped == {"corrupt_image": 3, "no_objects": 1}
    assert merged.problems == (problem,)
    unknown = contract.concatenate([a, _source(tf.data.Dataset.range(1), "C")], "A+C")
    assert unknown.num_examples is None


def test_concatenate_refuses_different_classes_and_nothing():
    a = _source(tf.data.Dataset.range(1), "A")
    with pytest.raises(ValueError, match="different class lists.*'A', 'Z'"):
        contract.concatenate([a, _source(tf.data.Dataset.range(1), "Z", classes=("z",))], "x")
    with pytest.raises(ValueError, match="at least one"):
        contract.concatenate([], "x")
