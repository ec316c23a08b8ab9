"""Stateless random draws keyed by a per-example seed, shared by the augmentation steps.

Every draw is ``tf.random.stateless_*`` of ``fold_in(seed, tag)``, so an example's augmentation depends only on
its seed and the step's tag, never on thread scheduling or a global RNG (the chain runs in parallel tf.data maps).
"""

from __future__ import annotations

import tensorflow as tf


def key(seed: tf.Tensor, tag: int) -> tf.Tensor:
    """The sub-seed of draw ``tag``."""
    return tf.random.experimental.stateless_fold_in(seed, tag)


def uniform(seed: tf.Tensor, tag: int, shape=(), low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    """float32 uniform in [low, high) of draw ``tag``."""
    return tf.random.stateless_uniform(shape, key(seed, tag), minval=low, maxval=high, dtype=tf.float32)


def coin(seed: tf.Tensor, tag: int, probability: float = 0.5) -> tf.Tensor:
    """The reference's ``random.randint(2)`` (true with probability 0.5) as a boolean scalar."""
    return uniform(seed, tag) < probability


def as_seed(seed) -> tf.Tensor:
    """Check and cast a stateless seed of shape [2]."""
    seed = tf.convert_to_tensor(seed)
    if seed.shape.rank is not None and seed.shape != [2]:
        raise ValueError(
            "augment: seed must be a stateless RNG seed of shape [2] (e.g. tf.constant([1, 2])), "
            f"got shape {seed.shape}."
        )
    return tf.cast(seed, tf.int64)
