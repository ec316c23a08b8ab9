"""PGD in pixel space, one step at a time, and the MTD step (docs/reference.md#pgd,
docs/reference.md#attack-objectives-and-mtd).

Attacks are plain functions of ``(model, images, targets, spec)`` shared by adversarial training (one step per
optimiser step, the interleaved schedule) and evaluation (all steps at once); ``spec`` is an ``AttackSpec``.
Models eat pixels, so the budget ``epsilon``, the step ``step_size`` and the ``[0, 255]`` clip all live in one
space.  The reference uses ``step_size = epsilon = 8`` and no random start: after every step each perturbation
component is in ``{-8, 0, +8}`` before the clip.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from robustdet_tf.attacks.budget import in_graph, project, random_start, repeat
from robustdet_tf.attacks.model_protocol import check_attackable
from robustdet_tf.attacks.objectives import (
    Objective,
    aimed_targets,
    detection_terms,
    make_objective,
    per_image_terms,
)
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.attacks.strong import strong_pgd

REFERENCE = AttackSpec()
"""PGD-20 on the classification loss, ε = α = 8, no random start (the reference's A_cls)."""


@in_graph
def input_gradient(objective: Objective, model: keras.Model, images: tf.Tensor, targets) -> tf.Tensor:
    """∇ of the objective with respect to the pixels."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        value = objective(model, images, targets)
    return tape.gradient(value, images)


def pgd_step(
    model: keras.Model,
    images: tf.Tensor,
    clean: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    spec: AttackSpec = REFERENCE,
    objective: Objective | None = None,
) -> tf.Tensor:
    """One signed-gradient ascent step from ``images`` on ``spec.method`` (or ``objective``), projected around
    ``clean``."""
    fn = objective if objective is not None else make_objective(spec.method, spec.con_weights, spec.cwa_per_image)
    grad = input_gradient(fn, model, images, targets)
    return tf.stop_gradient(project(images + spec.step_size * tf.sign(grad), clean, spec.epsilon))


def per_image_detection_loss(model: keras.Model, images: tf.Tensor, targets) -> tf.Tensor:
    """``loss_l + loss_c`` of each image separately (normalised by that image's positives), ``[B]``."""
    return tf.add_n(per_image_terms(model, model(images, training=False), targets))


def attack_step(
    model: keras.Model,
    images: tf.Tensor,
    clean: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    spec: AttackSpec = REFERENCE,
) -> tf.Tensor:
    """One step of any PGD-family attack: ``cls``, ``loc``, ``con``, ``cwa``, TOG's (PGD on that objective) or
    ``mtd``, aimed at the ground truth ``targets``.

    MTD takes a loc step and a cls step from the same iterate and keeps the one with the larger total loss.  The
    reference chooses once per batch (``spec.mtd_per_image=False``): the loc candidate wins only if its batch
    ``loss_l + loss_c`` is strictly larger.  ``mtd_per_image=True`` makes the choice image by image, as the MTD
    paper intends.  ``tog_mislabeling`` aims at the mislabelled detections of ``clean``, made here at every step
    (a step called alone, as the step sweep does, must take the step ``pgd`` takes); ``pgd`` makes them once.
    """
    return _aimed_step(model, images, clean, aimed_targets(spec.method, model, clean, targets), spec)


def _aimed_step(model, images, clean, targets, spec):
    """``attack_step`` on targets already aimed (``objectives.aimed_targets``)."""
    if spec.method == "clean":
        return clean
    if spec.method != "mtd":
        return pgd_step(model, images, clean, targets, spec)
    cand_loc = pgd_step(model, images, clean, targets, spec.replace(method="loc"))
    cand_cls = pgd_step(model, images, clean, targets, spec.replace(method="cls"))
    if spec.mtd_per_image:
        take_loc = per_image_detection_loss(model, cand_loc, targets) > per_image_detection_loss(
            model, cand_cls, targets
        )
        return tf.where(take_loc[:, None, None, None], cand_loc, cand_cls)
    total_loc = tf.add_n(detection_terms(model, cand_loc, targets))
    total_cls = tf.add_n(detection_terms(model, cand_cls, targets))
    return tf.where(total_loc > total_cls, cand_loc, cand_cls)


@in_graph
def pgd(
    model: keras.Model,
    images: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    spec: AttackSpec = REFERENCE,
    seed_generator: keras.random.SeedGenerator | None = None,
) -> tf.Tensor:
    """The full attack: ``spec.steps`` iterations of ``attack_step`` from ``images`` (or a random start).

    The default is the reference protocol (PGD-20 A_cls, ε = α = 8, no random start).  The random start draws from
    ``seed_generator`` when given (a new draw per call: training), else from ``spec.seed`` (the same draw for the
    same input: evaluation).  The steps are one graph ``while`` loop (``budget.repeat``), written out so the
    graph needs no AutoGraph conversion.

    With restarts, the ``apgd`` schedule or an adaptive method (``spec.per_image``) the attack is
    ``strong.strong_pgd``: the best iterate per image instead of the final one.  TOG's attacks (``tog_*``) are
    these steps on their objectives (``objectives``); ``tog_mislabeling`` aims at the mislabelled detections of the
    clean images, made once here, and ignores ``targets``.
    """
    check_attackable(model, f"pgd ({spec.method})")
    if spec.per_image:
        return strong_pgd(model, images, targets, spec, seed_generator)
    clean = tf.convert_to_tensor(images, tf.float32)
    seed = seed_generator if seed_generator is not None else spec.seed
    adv = random_start(clean, spec.epsilon, seed) if spec.random_start else clean
    aimed = aimed_targets(spec.method, model, clean, targets)  # once, from the clean images
    return repeat(spec.steps, lambda x: _aimed_step(model, x, clean, aimed, spec), adv)
