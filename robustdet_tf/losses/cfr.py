"""CFR losses as the reference codes them (docs/reference.md#cfr-losses): reconstruction MSE and the KL term of the
sampled conv4_3.

The decoder reconstructs the *clean* image from conv4_3's sample, in the mean-subtracted 0–255 space, so the
features of an adversarial image are pulled towards those of its clean source; the KL term keeps the
per-element Gaussian close to N(0, 1).
"""

from __future__ import annotations

import tensorflow as tf


def reconstruction_loss(reconstruction: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean over all elements of the squared error (mean reduction, 0–255 units, not a summed ℓ2 norm)."""
    return tf.reduce_mean(tf.square(tf.cast(reconstruction, tf.float32) - tf.cast(target, tf.float32)))


def kl_divergence(mu: tf.Tensor, logvar: tf.Tensor) -> tf.Tensor:
    """``-0.5 · mean(1 + logvar − μ² − exp(logvar))`` over all elements."""
    mu = tf.cast(mu, tf.float32)
    logvar = tf.cast(logvar, tf.float32)
    return -0.5 * tf.reduce_mean(1.0 + logvar - tf.square(mu) - tf.exp(logvar))
