"""Batch normalisation whose training statistics are those of the *global* batch, on one device or many.

Why: RobustDet's AID (a ResNet-18) and the CFR decoder normalise with batch statistics while training.  Under
``tf.distribute`` Keras' plain ``BatchNormalization`` uses each replica's share of the batch, so N replicas train
another model than one device does on the same global batch.  Keras' ``synchronized=True`` all-reduces the
statistics but computes the variance as ``E[x²] − E[x]²``, which is not what one device computes
(``tf.nn.moments``, two passes) and loses digits when the mean is large (the AID sees 0..255-scale pixels).

``GlobalBatchNormalization`` computes the same two-pass statistics everywhere:
``mean = Σx / n`` and ``var = Σ(x − mean)² / n`` over the global batch, summed image by image and then over the
images in global-batch order (``global_moments``), so one device and N replicas normalise with bit-identical
statistics (``tests/models/test_distributed.py`` and ``tests/test_multi_worker.py`` check the trained weights).
Inference (moving statistics) is unchanged, and so are the weights, so checkpoints of ``BatchNormalization``
load as they are.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def _gather(ctx: tf.distribute.ReplicaContext | None, value: tf.Tensor) -> tf.Tensor:
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_gather(value, axis=0)


def global_moments(x: tf.Tensor, axes: list[int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Two-pass mean and (biased) variance of ``x`` over ``axes`` (which include the batch axis 0) and over every
    replica in sync, in float32.

    Each image's sums are taken on its own replica, then the per-image sums of the global batch are gathered in
    replica order and added in that one order: one device adds the very same numbers in the same order, so the
    statistics (and the mixtures the AID computes from them) are bit for bit those of one device.  An all-reduce of
    per-replica sums would add in another order, and the last-bit differences flip the hard-negative selection of
    the MultiBox loss downstream.
    """
    if 0 not in axes:
        raise ValueError(f"global_moments reduces over the batch axis 0; got axes {axes}.")
    x = tf.cast(x, tf.float32)
    ctx = tf.distribute.get_replica_context()
    inner = [a for a in axes if a != 0]
    per_image = int(np.prod([x.shape[a] for a in inner])) if all(x.shape[a] is not None for a in inner) else None
    sums = _gather(ctx, tf.reduce_sum(x, axis=inner, keepdims=True))
    count = tf.cast(tf.shape(sums)[0] * (per_image or tf.reduce_prod(tf.gather(tf.shape(x), inner))), tf.float32)
    mean = tf.reduce_sum(sums, axis=0, keepdims=True) / count
    squares = _gather(ctx, tf.reduce_sum(tf.square(x - mean), axis=inner, keepdims=True))
    variance = tf.reduce_sum(squares, axis=0, keepdims=True) / count
    return tf.squeeze(mean, axes), tf.squeeze(variance, axes)


@keras.saving.register_keras_serializable(package="robustdet_tf")
class GlobalBatchNormalization(keras.layers.BatchNormalization):
    """``BatchNormalization`` with global-batch two-pass training statistics (see the module docstring).

    Takes ``BatchNormalization``'s arguments except ``synchronized`` (always global) and ``renorm``.
    """

    def __init__(self, **kwargs):
        if kwargs.pop("synchronized", False):
            pass  # the statistics are global anyway; accepted so configs of Keras' layer load
        if kwargs.get("renorm"):
            raise ValueError("GlobalBatchNormalization does not implement batch renormalisation (renorm=True).")
        super().__init__(**kwargs)

    def _moments(self, inputs, mask):
        if mask is not None:
            raise ValueError(f"{self.name}: GlobalBatchNormalization takes no mask.")
        mean, variance = global_moments(inputs, self._reduction_axes)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)
