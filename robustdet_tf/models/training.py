"""Pieces of a training step shared by every model: coupled weight decay under loss scaling, the reference SGD.

The reference optimises with PyTorch SGD (momentum 0.9, weight decay 5e-4 *added to the gradient*).  Keras'
``weight_decay`` argument is decoupled (AdamW-style) and would train differently, so the decay is added here.
The replica arithmetic (global normalisers, the division of the gradients) is in ``robustdet_tf.distribution``.
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


def loss_scale(optimizer, dtype) -> tf.Tensor | None:
    """The current loss scale of a ``LossScaleOptimizer`` (``mixed_float16``) in ``dtype``; ``None`` otherwise."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return tf.cast(optimizer.scale_loss(tf.ones([], dtype)), dtype)
    return None


def gradients(optimizer, loss: tf.Tensor, tape: tf.GradientTape, variables, weight_decay: float) -> list:
    """``d loss / d variables + wd·w`` (PyTorch-style coupled decay), both multiplied by the loss scale of a
    ``LossScaleOptimizer``: its ``apply`` divides the scale out of every gradient it is given, the decay's too."""
    scale = loss_scale(optimizer, loss.dtype)
    grads = tape.gradient(loss, variables, output_gradients=scale)
    return add_weight_decay(grads, variables, weight_decay, scale)


def add_weight_decay(
    grads: Sequence[tf.Tensor | None], variables: Sequence[tf.Variable], weight_decay: float,
    scale: tf.Tensor | None = None,
) -> list[tf.Tensor | None]:
    """PyTorch-style L2: ``g + wd·w`` (``g + scale·wd·w`` for loss-scaled gradients) for every variable that has a
    gradient."""
    if not weight_decay:
        return list(grads)
    decay = tf.constant(weight_decay, tf.float32) if scale is None else weight_decay * tf.cast(scale, tf.float32)
    return [None if g is None else g + tf.cast(decay, g.dtype) * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]


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
