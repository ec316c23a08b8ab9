"""Attack objectives: the scalar a PGD step ascends (spec §5.2).

Each objective is a function of ``(model, images, targets)`` that runs the model in test mode
(``training=False``: AID batch norm on running statistics, CFR uses μ) while reading the raw head outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf.losses.class_wise import class_wise_loss

Objective = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]

OBJECTIVES = ("cls", "loc", "con", "cwa")


def detection_terms(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor]):
    """``(loss_l, loss_c)`` of the model on ``images`` in test mode."""
    return model.detection_loss(model(images, training=False), targets)


def make_objective(name: str, con_weights: Sequence[float] = (1.0, 1.0)) -> Objective:
    """The objective maximised by an attack: ``cls`` (A_cls), ``loc`` (A_loc), ``con`` (weighted sum) or ``cwa``."""
    if name == "cls":
        return lambda model, x, t: detection_terms(model, x, t)[1]
    if name == "loc":
        return lambda model, x, t: detection_terms(model, x, t)[0]
    if name == "con":

        def con(model, x, t):
            loss_l, loss_c = detection_terms(model, x, t)
            return con_weights[0] * loss_l + con_weights[1] * loss_c

        return con
    if name == "cwa":
        return lambda model, x, t: class_wise_loss(
            model(x, training=False), t, model.priors, threshold=model.match_threshold
        )
    raise ValueError(f"unknown attack objective {name!r}; choose one of {OBJECTIVES}")
