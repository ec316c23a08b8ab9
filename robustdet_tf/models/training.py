"""Pieces of a training step shared by every model: coupled weight decay and distribution-aware normalisers.

The reference optimises with PyTorch SGD (momentum 0.9, weight decay 5e-4 *added to the gradient*).  Keras'
``weight_decay`` argument is decoupled (AdamW-style) and would train differently, so the decay is added here.
Under ``tf.distribute`` Keras sums the replicas' gradients; losses normalised by the *global* number of positive
priors therefore sum to exactly the single-device loss.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import keras
import tensorflow as tf

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def precision(name: str = "float32") -> Iterator[None]:
    """Build models under the Keras dtype policy ``name`` (``config.train.precision``), then restore the previous.

    Layers take their policy when they are created, so only models built inside the block compute in reduced
    precision (variables stay float32; the models cast their outputs back to float32, so losses, decoding and the
    attacks' pixel gradients are float32).
    """
    if name not in PRECISIONS:
        raise ValueError(f"config.train.precision={name!r}: use one of {PRECISIONS}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def scaled_gradients(optimizer, loss: tf.Tensor, tape: tf.GradientTape, variables) -> list[tf.Tensor | None]:
    """``d loss / d variables``, multiplied by the loss scale of a ``LossScaleOptimizer`` (``mixed_float16``; its
    ``apply`` divides it out and skips steps whose gradients overflowed)."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scale = tf.cast(optimizer.scale_loss(tf.ones_like(loss)), loss.dtype)
        return tape.gradient(loss, variables, output_gradients=scale)
    return tape.gradient(loss, variables)


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 outside ``tf.distribute``)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def global_sum(value: tf.Tensor) -> tf.Tensor:
    """Sum of ``value`` over replicas when called inside a replica context; the value itself otherwise."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value)


def gather_replicas(value: tf.Tensor) -> tf.Tensor:
    """``value`` of every replica in sync concatenated along axis 0 in replica order (the rows of the global
    batch, as one device would hold them); the value itself outside ``tf.distribute``.  Differentiable: each
    replica's rows get the gradient summed over the replicas that used them."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_gather(value, axis=0)


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
