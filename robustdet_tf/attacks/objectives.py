"""Attack objectives: the scalar a PGD step ascends (docs/reference.md#attack-objectives-and-mtd).

Each objective is a function of ``(model, images, targets)`` that runs the model in test mode
(``training=False``: AID batch norm on running statistics, CFR uses μ) while reading the raw head outputs.
``make_objective`` gives the batch scalar the reference ascends; ``make_per_image_objective`` gives ``[B]`` values,
each image's loss as if it were alone, for attacks that keep the best iterate per image (restarts, APGD) or choose
per image (MTD per image, the worst-case column).  In test mode images do not interact, so the sign of the batch
gradient equals the sign of each image's own gradient and both forms take the same PGD steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf.losses.class_wise import class_wise_loss

Objective = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]
Outputs = Mapping[str, tf.Tensor]

OBJECTIVES = ("cls", "loc", "con", "cwa")


def detection_terms(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor]):
    """``(loss_l, loss_c)`` of the model on ``images`` in test mode."""
    return model.detection_loss(model(images, training=False), targets)


def make_objective(name: str, con_weights: Sequence[float] = (1.0, 1.0), cwa_per_image: bool = False) -> Objective:
    """The objective maximised by an attack: ``cls`` (A_cls), ``loc`` (A_loc), ``con`` (weighted sum) or ``cwa``.

    ``cwa_per_image``: the sum over the images of each image's own class-wise loss, whose gradient at every image
    is that of the image attacked alone (the reference's evaluation, one image at a time); otherwise the classes are
    averaged over the batch (its training).  The other objectives need no such switch: their batch normalisation (by
    the positives of the batch) only scales each image's gradient, which a sign step does not see."""
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
        if cwa_per_image:
            return lambda model, x, t: tf.reduce_sum(per_image_class_wise(model, model(x, training=False), t))
        return lambda model, x, t: class_wise_loss(
            model(x, training=False), t, model.priors, threshold=model.match_threshold
        )
    raise ValueError(f"unknown attack objective {name!r}; choose one of {OBJECTIVES}")


def per_image_terms(model: keras.Model, outputs: Outputs, targets: Mapping[str, tf.Tensor]):
    """``(loss_l, loss_c)`` ``[B]`` each, every image normalised by its own positives."""
    return model.detection_loss(outputs, targets, per_image=True)


def per_image_class_wise(model: keras.Model, outputs: Outputs, targets: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The CWA loss of each image alone, ``[B]`` (class averages per (image, class) segment)."""
    return class_wise_loss(outputs, targets, model.priors, threshold=model.match_threshold, per_image=True)


def per_image_loss_of_outputs(name: str, con_weights: Sequence[float] = (1.0, 1.0)):
    """``(model, outputs, targets) → [B]`` for objective ``name`` on already computed head outputs (the adaptive
    attacks run the model with their own π and then score the outputs)."""
    if name == "cwa":
        return per_image_class_wise
    if name not in OBJECTIVES:
        raise ValueError(f"unknown attack objective {name!r}; choose one of {OBJECTIVES}")

    def loss(model, outputs, targets):
        loss_l, loss_c = per_image_terms(model, outputs, targets)
        return {"cls": loss_c, "loc": loss_l, "con": con_weights[0] * loss_l + con_weights[1] * loss_c}[name]

    return loss


def make_per_image_objective(name: str, con_weights: Sequence[float] = (1.0, 1.0)) -> Objective:
    """``(model, images, targets) → [B]``: objective ``name`` of each image alone, in test mode."""
    score = per_image_loss_of_outputs(name, con_weights)
    return lambda model, x, t: score(model, model(x, training=False), t)
