"""GlobalBatchNormalization: Keras' BatchNormalization on one device, image-order statistics, a .keras round trip.

(Two replicas against one device: tests/models/test_distributed.py.)"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.layers.global_batch_norm import GlobalBatchNormalization, global_moments
from robustdet_tf.models.discriminator import PerImageDense, build_discriminator
from tests.helpers import assert_keras_round_trip


def _images(n=6, seed=0):
    # pixel-scale values with a large mean, where E[x²] − E[x]² would lose digits
    return np.random.default_rng(seed).uniform(0, 255, (n, 9, 7, 5)).astype(np.float32) + 1000.0


def test_training_matches_keras_batch_normalization_and_updates_the_moving_statistics():
    x = _images()
    ours = GlobalBatchNormalization(momentum=0.9, epsilon=1e-5)
    theirs = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    y_ours, y_theirs = ours(x, training=True), theirs(x, training=True)
    np.testing.assert_allclose(y_ours, y_theirs, atol=2e-4)
    np.testing.assert_allclose(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.moving_variance.numpy(), theirs.moving_variance.numpy(), rtol=1e-4)
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False), atol=2e-4)


def test_moments_are_the_two_pass_statistics_summed_image_by_image():
    x = _images(4, seed=1)
    mean, variance = global_moments(tf.constant(x), [0, 1, 2])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(variance, x64.var(axis=(0, 1, 2)), rtol=1e-4)
    # the batch is reduced last, over per-image sums in image order: a reordered batch may differ only in rounding,
    # and the first images' sums do not depend on the others'
    per_image = tf.reduce_sum(tf.constant(x), [1, 2], keepdims=True)
    want = tf.reduce_sum(per_image, 0) / (4 * 9 * 7)
    np.testing.assert_array_equal(mean.numpy(), tf.squeeze(want).numpy())
    with pytest.raises(ValueError, match="batch axis 0"):
        global_moments(tf.constant(x), [1, 2])


def test_keras_file_round_trip(tmp_path):
    layer = GlobalBatchNormalization(momentum=0.9, epsilon=1e-5, name="gbn")
    x = _images(3)
    layer(x, training=True)
    loaded = assert_keras_round_trip(layer, x, tmp_path, call_kwargs={"training": False}, atol=1e-4)
    assert isinstance(loaded, GlobalBatchNormalization)


def test_renorm_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="renorm"):
        GlobalBatchNormalization(renorm=True)


def test_per_image_dense_equals_dense_and_does_not_depend_on_the_batch(tmp_path):
    x = np.random.default_rng(3).normal(size=(7, 512)).astype(np.float32)
    ours = PerImageDense(4, name="fc")
    plain = keras.layers.Dense(4)
    ours.build((None, 512))
    plain.build((None, 512))
    plain.set_weights(ours.get_weights())
    np.testing.assert_allclose(ours(x), plain(x), atol=1e-5)
    whole = ours(x).numpy()
    np.testing.assert_array_equal(whole, np.concatenate([ours(x[:3]).numpy(), ours(x[3:]).numpy()]))
    assert isinstance(assert_keras_round_trip(ours, x, tmp_path), PerImageDense)


def test_the_aid_gives_each_image_its_mixture_whatever_the_batch():
    """Bit for bit per image in test mode, except for TF's own convolution kernels, whose last bits may depend on
    the batch size: the mixture then moves by rounding only."""
    keras.utils.set_random_seed(0)
    aid = build_discriminator(num_kernels=4, base_width=4)
    x = np.random.default_rng(4).uniform(-120, 130, (4, 32, 32, 3)).astype(np.float32)
    whole = aid(x, training=False).numpy()
    halves = np.concatenate([aid(x[:2], training=False).numpy(), aid(x[2:], training=False).numpy()])
    np.testing.assert_allclose(whole, halves, atol=1e-7)
    assert isinstance(aid.get_layer("fc"), PerImageDense)
