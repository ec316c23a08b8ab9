"""L2Norm of the conv4_3 source (docs/reference.md#the-detector): per-position unit L2 norm over channels times a
learnable scale."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.layers.l2norm import L2Norm
from tests.helpers import assert_keras_round_trip


def test_each_position_is_scaled_to_the_norm_of_its_weight():
    x = np.random.default_rng(0).normal(0, 30, (2, 3, 4, 5)).astype(np.float32)
    layer = L2Norm(scale=20.0)
    out = layer(x).numpy()
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 20.0, rtol=1e-5)
    np.testing.assert_allclose(out / 20.0, x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(L2Norm(20.0)(tf.constant([[[[3.0, 4.0]]]])).numpy(), [[[[12.0, 16.0]]]], rtol=1e-6)


def test_weight_is_one_trainable_scale_per_channel():
    layer = L2Norm(scale=5.0)
    layer.build((None, 2, 2, 3))
    assert [tuple(w.shape) for w in layer.trainable_weights] == [(3,)]
    np.testing.assert_array_equal(layer.weight.numpy(), [5.0, 5.0, 5.0])
    layer.weight.assign([1.0, 2.0, 3.0])
    x = np.ones((1, 1, 1, 3), np.float32)
    np.testing.assert_allclose(layer(x).numpy()[0, 0, 0], np.array([1.0, 2.0, 3.0]) / np.sqrt(3.0), rtol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    np.testing.assert_allclose(tape.gradient(loss, layer.weight).numpy(), np.full(3, 1 / np.sqrt(3.0)), rtol=1e-6)


@pytest.mark.parametrize("epsilon", [1e-10, 1e-2])
def test_epsilon_sits_inside_the_square_root(epsilon):
    """As the reference: ``x / sqrt(sum x² + eps)``, so an all-zero position gives 0 (not NaN) and a tiny one is
    damped rather than blown up to unit norm."""
    x = np.array([[[[0.0, 0.0], [0.03, 0.04]]]], np.float32)
    out = L2Norm(scale=1.0, epsilon=epsilon)(x).numpy()
    np.testing.assert_array_equal(out[0, 0, 0], [0.0, 0.0])
    np.testing.assert_allclose(out[0, 0, 1], x[0, 0, 1] / np.sqrt(0.0025 + epsilon), rtol=1e-5)


def test_keras_round_trip(tmp_path):
    layer = L2Norm(5.0, epsilon=1e-3, name="n")
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 3, 4)).astype(np.float32)
    layer(x)
    layer.weight.assign([1.0, 2.0, 3.0, 4.0])  # not the initial value: the weights themselves must be saved
    loaded = assert_keras_round_trip(layer, x, tmp_path)
    assert (loaded.scale, loaded.epsilon) == (5.0, 1e-3)
