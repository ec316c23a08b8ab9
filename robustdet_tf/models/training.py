"""Pieces of a training step shared by every model: coupled weight decay and distribution-aware normalisers.

The reference optimises with PyTorch SGD (momentum 0.9, weight decay 5e-4 *added to the gradient*).  Keras'
``weight_decay`` argument is decoupled (AdamW-style) and would train differently, so the decay is added here.
Under ``tf.distribute`` Keras sums the replicas' gradients; losses normalised by the *global* number of positive
priors therefore sum to exactly the single-device loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 outside ``tf.distribute``)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """Sum of ``value`` over replicas when called inside a replica context; the value itself otherwise."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def add_weight_decay(
    grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable], weight_decay: float
) -> list[tf.Tensor | None]:
    """PyTorch-style L2: ``g + wd·w`` for every variable that has a gradient.

    Under ``tf.distribute`` the replicas' gradients are summed, so each replica adds ``wd·w / replicas``.
    """
    if not weight_decay:
        return list(grads)
    scale = weight_decay / num_replicas()
    return [None if g is None else g + scale * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]


def sgd(learning_rate: float = 1e-3, momentum: float = 0.9) -> keras.optimizers.Optimizer:
    """The reference optimiser (the weight decay is added by the model's ``train_step``)."""
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum)


def check_finite(terms: dict[str, tf.Tensor], step: tf.Tensor) -> list[tf.Operation]:
    """Assertions that fail the step with the optimiser step and the name of each non-finite loss term.

    Use the returned ops as control dependencies of the update; in ``fit`` the failure surfaces as an
    ``InvalidArgumentError`` whose message names the term, the step and the value.
    """
    return [
        tf.debugging.Assert(
            tf.reduce_all(tf.math.is_finite(value)),
            [f"non-finite loss term {name} at optimiser step", step, "value:", value],
        )
        for name, value in terms.items()
    ]


def as_targets(targets) -> dict[str, tf.Tensor]:
    """The padded target dict with the package's dtypes (float32 boxes, int32 labels), other keys dropped."""
    return {"boxes": tf.cast(targets["boxes"], tf.float32), "labels": tf.cast(targets["labels"], tf.int32)}
