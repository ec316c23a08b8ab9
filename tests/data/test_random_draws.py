"""Tests of the stateless draws: pure functions of (seed, tag), independent across tags, seeds checked."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.data import random_draws
from tests.data.seeds import seed


def test_draws_are_pure_functions_of_seed_and_tag():
    a = random_draws.uniform(seed(3, 1), 7, shape=[5], low=-2.0, high=4.0)
    np.testing.assert_array_equal(a, random_draws.uniform(seed(3, 1), 7, shape=[5], low=-2.0, high=4.0))
    assert not np.array_equal(a, random_draws.uniform(seed(3, 1), 8, shape=[5], low=-2.0, high=4.0))
    assert not np.array_equal(a, random_draws.uniform(seed(3, 2), 7, shape=[5], low=-2.0, high=4.0))
    assert np.all(a >= -2.0) and np.all(a < 4.0) and a.dtype == tf.float32


def test_coin_is_fair_and_follows_probability():
    flips = np.array([bool(random_draws.coin(seed(k), 0)) for k in range(400)])
    assert 0.4 < flips.mean() < 0.6
    rare = np.array([bool(random_draws.coin(seed(k), 0, probability=0.1)) for k in range(400)])
    assert 0.03 < rare.mean() < 0.17


def test_key_equals_tf_fold_in():
    np.testing.assert_array_equal(random_draws.key(seed(5, 6), 3),
                                  tf.random.experimental.stateless_fold_in(seed(5, 6), 3))


def test_as_seed_refuses_wrong_shape_with_example():
    assert random_draws.as_seed(tf.constant([1, 2], tf.int32)).dtype == tf.int64
    with pytest.raises(ValueError, match=r"shape \[2\].*got shape \(3,\)"):
        random_draws.as_seed(tf.constant([1, 2, 3]))
