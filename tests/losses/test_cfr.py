"""The CFR reconstruction and KL terms as the reference codes them (docs/reference.md#cfr-losses)."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.losses.cfr import kl_divergence, reconstruction_loss


def test_reconstruction_is_the_mean_squared_error_over_all_elements():
    assert float(reconstruction_loss(tf.fill([2, 3, 3, 3], 4.0), tf.zeros([2, 3, 3, 3]))) == pytest.approx(16.0)
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-100, 100, (2, 5, 4, 3)), rng.uniform(-100, 100, (2, 5, 4, 3))
    assert float(reconstruction_loss(a, b)) == pytest.approx(np.mean((a - b) ** 2), rel=1e-5)  # mean, not sum
    assert float(reconstruction_loss(b, b)) == 0.0


def test_kl_is_the_mean_gaussian_kl_to_the_standard_normal():
    assert float(kl_divergence(tf.zeros([2, 5]), tf.zeros([2, 5]))) == pytest.approx(0.0)
    mu, logvar = tf.constant([1.0, 0.0]), tf.constant([0.0, np.log(2.0)], tf.float32)
    expected = -0.5 * np.mean([1 + 0 - 1 - 1, 1 + np.log(2) - 0 - 2])
    assert float(kl_divergence(mu, logvar)) == pytest.approx(expected, rel=1e-6)
    rng = np.random.default_rng(1)
    mu, var = rng.normal(0, 2, (3, 4, 4, 6)), rng.uniform(0.1, 5, (3, 4, 4, 6))
    kl_per_element = np.log(1 / np.sqrt(var)) + (var + mu**2) / 2 - 0.5  # KL(N(μ, σ²) ‖ N(0, 1))
    assert float(kl_divergence(mu, np.log(var))) == pytest.approx(kl_per_element.mean(), rel=1e-5)
    assert float(kl_divergence(mu, np.log(var))) > 0
