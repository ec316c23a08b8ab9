"""Loss conflict (paper Fig. 3): train on clean (or adversarial) images, watch the loss of the others move.

A copy of the model takes ``steps`` optimiser steps on one batch of clean images, another copy on the adversarial
versions of that batch; then each image of *another* batch, clean and adversarial, is scored before and after.
The four per-image loss changes — clean→clean, clean→adv, adv→clean, adv→adv (trained on → measured on) — show
whether learning one kind of image helps or hurts the other; the paper's argument is that for one shared detector
steps on adversarial images help clean images little or raise their loss (adv→clean), the conflict RobustDet is
built to remove.

What it is not: a training run.  The copies step on ``loss_l + loss_c`` of that one batch with a plain optimiser in
test mode (the AID's batch norm on its running statistics, no weight decay, no AID/CFR terms), and the adversarial
images of both batches are made once, against the unchanged model, so the change measured is that of the weights
alone.  The user's model is never modified: the copy is rebuilt from ``get_config()`` and given its weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.analysis.per_image import per_image_terms
from robustdet_tf.compiled import traced_once

CHANGES = ("clean_to_clean", "clean_to_adv", "adv_to_clean", "adv_to_adv")
"""Trained on → measured on."""

OPTIMIZERS = ("sgd", "adam")


def clone_model(model: keras.Model) -> keras.Model:
    """An independent copy of a robustdet_tf model: same class, config and weights, no shared variables."""
    try:
        clone = type(model).from_config(model.get_config())
    except (TypeError, ValueError, NotImplementedError) as err:
        raise ValueError(f"cannot copy {type(model).__name__} through get_config()/from_config() ({err}); the loss "
                         "conflict trains a copy so the given model is never changed.") from err
    clone.set_weights(model.get_weights())
    return clone


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    """The plain optimiser the copies step with (``sgd`` without momentum, or ``adam``)."""
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"loss-conflict optimizer {name!r}: use one of {OPTIMIZERS}.")


class CopyTrainer:
    """A copy of a model and a compiled optimiser step on it, restartable from the original's weights.

    One copy serves both runs of the analysis (clean, then adversarial): ``reset()`` gives it the original's weights
    again and restores the optimiser's initial state, so the step and the per-image loss are traced once, not once
    per run.
    """

    def __init__(self, model: keras.Model, optimizer: str = "sgd", learning_rate: float = 1e-3):
        self.model = model
        self.copy = clone_model(model)
        self.optimizer = make_optimizer(optimizer, learning_rate)
        variables = self.copy.trainable_variables
        self.optimizer.build(variables)
        self._initial_state = [tf.identity(v) for v in self.optimizer.variables]  # learning rate, zero moments
        copy, opt = self.copy, self.optimizer

        def step(x, t):
            with tf.GradientTape() as tape:
                loss = tf.add_n(copy.detection_loss(copy(x, training=False), t))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients([(tf.zeros_like(v) if g is None else g, v) for g, v in zip(grads, variables)])
            return loss

        self._step = traced_once(step, autograph=False)  # straight-line code: nothing to convert

    def reset(self) -> None:
        """The original's weights and the optimiser state it was built with (step counter and moments zero)."""
        self.copy.set_weights(self.model.get_weights())
        for variable, value in zip(self.optimizer.variables, self._initial_state):
            variable.assign(value)

    def train(self, images: tf.Tensor, targets: Mapping[str, tf.Tensor], steps: int) -> np.ndarray:
        """``steps`` optimiser steps on the batch loss ``loss_l + loss_c`` of ``images`` (test mode) from the
        original's weights; returns the loss before each step.  The trained copy is ``self.copy``."""
        if int(steps) < 1:
            raise ValueError(f"loss conflict: steps must be >= 1 (got {steps}); set config.analysis.conflict_steps.")
        self.reset()
        targets = {"boxes": tf.cast(targets["boxes"], tf.float32), "labels": tf.cast(targets["labels"], tf.int32)}
        images = tf.cast(images, tf.float32)
        return np.asarray([float(self._step(images, targets)) for _ in range(int(steps))])


def train_copy(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor], steps: int,
               optimizer: str = "sgd", learning_rate: float = 1e-3) -> tuple[keras.Model, np.ndarray]:
    """A copy of ``model`` after ``steps`` optimiser steps on the batch loss of ``images``, and the loss before
    each step."""
    trainer = CopyTrainer(model, optimizer, learning_rate)
    losses = trainer.train(images, targets, steps)
    return trainer.copy, losses


def loss_function(model: keras.Model):
    """A compiled ``(images, targets) → [B]`` per-image ``loss_l + loss_c`` of ``model`` in test mode."""
    def losses(x, t):
        return tf.reduce_sum(per_image_terms(model, x, t), -1)

    return traced_once(losses, autograph=False)  # no Python control flow to convert


def per_image_losses(loss_fn, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """``loss_fn`` (see ``loss_function``) on the clean and on the adversarial images of ``(clean, adv, targets)``
    batches, as two ``[N]`` arrays."""
    clean, adv = [], []
    for clean_images, adv_images, targets in batches:
        clean.append(loss_fn(clean_images, targets).numpy())
        adv.append(loss_fn(adv_images, targets).numpy())
    if not clean:
        raise ValueError("loss conflict: the measurement batches are empty; give at least one batch of images.")
    return np.concatenate(clean), np.concatenate(adv)


def loss_conflict(model: keras.Model, train_batch: tuple, measure_batches: Iterable, steps: int = 1,
                  optimizer: str = "sgd", learning_rate: float = 1e-3) -> dict[str, Any]:
    """Per-image loss changes after training copies of ``model`` on clean / adversarial images.

    ``train_batch`` is ``(clean, adversarial, targets)``; ``measure_batches`` yields the same triple for other
    images.  Returns ``{change: [N] array}`` for each of ``CHANGES``, the losses before training
    (``before_clean``, ``before_adv``) and each copy's batch loss before each step (``train_loss_clean``,
    ``train_loss_adv``).
    """
    measure_batches = list(measure_batches)
    before_clean, before_adv = per_image_losses(loss_function(model), measure_batches)
    trainer = CopyTrainer(model, optimizer, learning_rate)
    copy_loss = loss_function(trainer.copy)
    train_clean, train_adv, train_targets = train_batch
    result: dict[str, Any] = {"before_clean": before_clean, "before_adv": before_adv}
    for kind, images in (("clean", train_clean), ("adv", train_adv)):
        result[f"train_loss_{kind}"] = trainer.train(images, train_targets, steps)
        after_clean, after_adv = per_image_losses(copy_loss, measure_batches)
        result[f"{kind}_to_clean"] = after_clean - before_clean
        result[f"{kind}_to_adv"] = after_adv - before_adv
    return result


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """Mean per-image change and the fraction of images whose loss rose, for each of ``CHANGES``."""
    out = {}
    for change in CHANGES:
        values = np.asarray(result[change], np.float64)
        out[change] = {"mean": float(values.mean()), "median": float(np.median(values)),
                       "fraction_up": float((values > 0).mean()), "per_image": values}
    return out
