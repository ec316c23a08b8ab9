"""Tests of the tfds helpers: no implicit download, clear not-prepared errors, box conversion from tfds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.data import contract, tfds_helpers


def test_sorted_tfds_boxes_reorders_sorts_and_shifts():
    bbox = tf.constant([[0.2, 0.1, 0.6, 0.5],    # ymin, xmin, ymax, xmax
                        [0.6, 0.5, 0.2, 0.1]])   # corners swapped (tfds mock data)
    out = tfds_helpers.sorted_tfds_boxes(bbox, 10, 20, pixel_offset=0.0)
    np.testing.assert_allclose(out, [[0.1, 0.2, 0.5, 0.6]] * 2, atol=1e-7)
    shifted = tfds_helpers.sorted_tfds_boxes(bbox, tf.constant(10), tf.constant(20), pixel_offset=1.0)
    np.testing.assert_allclose(shifted, [[0.1 - 1 / 20, 0.2 - 1 / 10, 0.5 - 1 / 20, 0.6 - 1 / 10]] * 2, atol=1e-7)


def test_common_length():
    assert int(tfds_helpers.common_length(tf.zeros([3, 4]), tf.zeros([2]), tf.zeros([5]))) == 2


def test_not_prepared_error_names_where_and_how():
    error = tfds_helpers.tfds_not_prepared_error("voc/2007", "/data/tfds", ["VOCtest_06-Nov-2007.tar"])
    assert isinstance(error, contract.DatasetNotFoundError)
    for part in ("voc/2007", "/data/tfds", "VOCtest_06-Nov-2007.tar", "manual_dir", "download=True"):
        assert part in str(error)


def test_builder_refuses_an_incomplete_manual_dir(tmp_path):
    with pytest.raises(contract.DatasetNotFoundError, match="lacks b.tar"):
        (tmp_path / "a.tar").write_bytes(b"")
        tfds_helpers.tfds_builder("voc/2007", str(tmp_path / "data"), str(tmp_path), True, ["a.tar", "b.tar"])


def test_unprepared_dataset_raises_without_download(tmp_path):
    builder = tfds_helpers.tfds_builder("voc/2007", str(tmp_path), None, False, ["x.tar"])
    with pytest.raises(contract.DatasetNotFoundError, match=str(tmp_path)):
        tfds_helpers.tfds_as_dataset(builder, "test", "voc/2007", str(tmp_path), ["x.tar"])
    assert not any(tmp_path.iterdir())  # nothing downloaded or written


def test_num_examples_unknown_is_none():
    class Info:
        splits = {}

    class Builder:
        info = Info()

    assert tfds_helpers.tfds_num_examples(Builder(), "test") is None
