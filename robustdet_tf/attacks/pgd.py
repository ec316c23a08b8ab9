"""PGD in pixel space, one step at a time, and the MTD step (spec §5.1, §5.2).

Attacks are plain functions of ``(model, images, targets, ...)`` shared by adversarial training (one step per
optimiser step, the interleaved schedule) and evaluation (all steps at once).  Models eat pixels, so the budget
``epsilon``, the step ``step_size`` and the ``[0, 255]`` clip all live in one space.  The reference uses
``step_size = epsilon = 8`` and no random start: after every step each perturbation component is in
``{-8, 0, +8}`` before the clip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf.attacks.objectives import Objective, detection_terms, make_objective


def input_gradient(objective: Objective, model: keras.Model, images: tf.Tensor, targets) -> tf.Tensor:
    """∇ of the objective with respect to the pixels."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        value = objective(model, images, targets)
    return tape.gradient(value, images)


def project(candidate: tf.Tensor, clean: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Clip the perturbation to the ε-ball around ``clean`` and the image to ``[0, 255]``."""
    eta = tf.clip_by_value(candidate - clean, -epsilon, epsilon)
    return tf.clip_by_value(clean + eta, 0.0, 255.0)


def pgd_step(
    model: keras.Model,
    images: tf.Tensor,
    clean: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    objective: str | Objective = "cls",
    epsilon: float = 8.0,
    step_size: float = 8.0,
    con_weights: Sequence[float] = (1.0, 1.0),
) -> tf.Tensor:
    """One signed-gradient ascent step from ``images`` followed by the projection around ``clean``."""
    fn = make_objective(objective, con_weights) if isinstance(objective, str) else objective
    grad = input_gradient(fn, model, images, targets)
    return tf.stop_gradient(project(images + step_size * tf.sign(grad), clean, epsilon))


def per_image_detection_loss(model: keras.Model, images: tf.Tensor, targets) -> tf.Tensor:
    """``loss_l + loss_c`` of each image separately (normalised by that image's positives), ``[B]``."""
    outputs = model(images, training=False)
    terms = tf.map_fn(
        lambda item: tf.add_n(
            model.detection_loss(
                {k: v[None] for k, v in item[0].items()}, {k: v[None] for k, v in item[1].items()}
            )
        ),
        (
            {"loc": outputs["loc"], "logits": outputs["logits"]},
            {"boxes": targets["boxes"], "labels": targets["labels"]},
        ),
        fn_output_signature=tf.float32,
    )
    return terms


def mtd_step(
    model: keras.Model,
    images: tf.Tensor,
    clean: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    epsilon: float = 8.0,
    step_size: float = 8.0,
    per_image: bool = False,
) -> tf.Tensor:
    """One MTD step: a loc step and a cls step from the same iterate; keep the one with the larger total loss.

    The reference chooses once per batch (``per_image=False``): the loc candidate wins only if its batch
    ``loss_l + loss_c`` is strictly larger.  ``per_image=True`` makes the choice image by image, as the MTD paper
    intends.
    """
    cand_loc = pgd_step(model, images, clean, targets, "loc", epsilon, step_size)
    cand_cls = pgd_step(model, images, clean, targets, "cls", epsilon, step_size)
    if per_image:
        take_loc = per_image_detection_loss(model, cand_loc, targets) > per_image_detection_loss(
            model, cand_cls, targets
        )
        return tf.where(take_loc[:, None, None, None], cand_loc, cand_cls)
    total_loc = tf.add_n(detection_terms(model, cand_loc, targets))
    total_cls = tf.add_n(detection_terms(model, cand_cls, targets))
    return tf.where(total_loc > total_cls, cand_loc, cand_cls)


def attack_step(
    model: keras.Model,
    images: tf.Tensor,
    clean: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    method: str = "cls",
    epsilon: float = 8.0,
    step_size: float = 8.0,
    con_weights: Sequence[float] = (1.0, 1.0),
    mtd_per_image: bool = False,
) -> tf.Tensor:
    """One step of any training attack: ``cls``, ``loc``, ``con``, ``cwa`` (PGD on that objective) or ``mtd``."""
    if method == "clean":
        return clean
    if method == "mtd":
        return mtd_step(model, images, clean, targets, epsilon, step_size, mtd_per_image)
    return pgd_step(model, images, clean, targets, method, epsilon, step_size, con_weights)


def random_start(images: tf.Tensor, epsilon: float, seed=None) -> tf.Tensor:
    """Uniform noise in the ε-ball, clipped to ``[0, 255]``."""
    noise = keras.random.uniform(tf.shape(images), -epsilon, epsilon, seed=seed)
    return tf.clip_by_value(images + noise, 0.0, 255.0)


def pgd(
    model: keras.Model,
    images: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    method: str = "cls",
    epsilon: float = 8.0,
    step_size: float = 8.0,
    steps: int = 20,
    use_random_start: bool = False,
    seed=None,
    con_weights: Sequence[float] = (1.0, 1.0),
    mtd_per_image: bool = False,
) -> tf.Tensor:
    """The full attack: ``steps`` iterations of ``attack_step`` from ``images`` (or a random start).

    The defaults are the reference protocol (PGD-20, ε = α = 8, no random start).  The step loop is a
    ``tf.range`` loop, so under ``tf.function`` it is one graph ``while`` loop.
    """
    clean = tf.convert_to_tensor(images, tf.float32)
    adv = random_start(clean, epsilon, seed) if use_random_start else clean
    for _ in tf.range(steps):
        adv = attack_step(model, adv, clean, targets, method, epsilon, step_size, con_weights, mtd_per_image)
    return adv
