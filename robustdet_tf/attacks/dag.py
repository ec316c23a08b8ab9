"""DAG, the Dense Adversary Generation attack of Xie et al. (2017), as RobustDet evaluates it (docs/reference.md#dag).

DAG does not ascend a detection loss; it pushes *every* prior towards its own randomly chosen wrong class:
``loss = Σ_active CE(logits, target) − Σ_active CE(logits, adversarial)``, where a prior stays *active* while its
arg-max class differs from its adversarial label.  Each iteration adds ``r = γ · g / ‖g‖∞`` (``g`` = ∇ of that
loss with respect to the pixels), so every step moves the image by exactly γ in its largest component.

Two variants, selected by ``DAGSpec.variant``:

* ``variant="reference"`` (the reference ``attack/DAG.py``, used for the paper's numbers): the gradient of step ``t`` is
  taken at ``clip(x0 + r_{t−1})`` — the clean image plus only the *previous single* step — while the output is
  ``clip(x0 + Σ r)``.  There is no ε bound (with γ = 0.5 and 150 steps ``‖R‖∞`` can reach 75) and no early stop.
* ``variant="corrected"``: the gradient is taken at the accumulated adversarial image, the perturbation is
  projected onto the ε-ball (``‖R‖∞ ≤ epsilon``) and ``[0, 255]`` after each step, and an image stops changing as
  soon as none of its priors is active (the original DAG stopping rule); the loop ends when every image is done.

Batching.  The reference runs one image at a time and takes ``‖g‖∞`` over the whole input tensor.  Here the norm
is taken **per image**, so an image's perturbation does not depend on the other images of its batch and a batched
run equals running the images one by one (the models are evaluated with ``training=False``, so no batch statistic
couples the images either).  The reference's "0/0 = NaN when no prior is active" is guarded: a zero gradient gives
``r = 0``.

Adversarial labels.  The reference draws them with Python's global ``random``.  Here they are stateless: the
label of prior ``p`` of image ``i`` is ``(target + u) mod C`` with ``u`` uniform in ``{1, …, C−1}`` drawn from
the seed ``fold_in([seed, ·], index_offset + i)``, i.e. uniform over the ``C − 1`` classes different from the
target (background can be the adversarial label of an object prior; background priors get a random object class).
The same ``(seed, index_offset + i)`` always gives the same labels, so results repeat; an image evaluated alone
equals the same image evaluated at position ``i`` of a batch when it is given ``index_offset = i``.  Evaluation
calls the attack batch by batch with the same seed, so image ``i`` of every batch shares a random stream; that is
harmless (the labels are still uniform per prior) and keeps the attack a pure function of its inputs.

Everything runs in-graph (one ``tf.while_loop``), batched; call it inside a ``tf.function``.  The settings are one
``DAGSpec`` (``attacks/spec.py``), as the PGD family's are one ``AttackSpec``.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from robustdet_tf import boxes as box_ops
from robustdet_tf.attacks.budget import in_graph
from robustdet_tf.attacks.model_protocol import MatchingDetector, check_attackable
from robustdet_tf.attacks.spec import DAGSpec
from robustdet_tf.behaviour import REFERENCE
from robustdet_tf.losses.multibox import per_prior_cross_entropy

REFERENCE_DAG = DAGSpec()
"""The reference's DAG: 150 steps of γ = 0.5, the reference's variant (unbounded), labels from seed 0."""

_SEED_WORD = 0xDA6  # second word of the base stateless seed; separates DAG's stream from other users of `seed`


def image_seeds(seed: int | tf.Tensor, batch_size: int | tf.Tensor, index_offset: int | tf.Tensor = 0) -> tf.Tensor:
    """Stateless seeds ``[B, 2]`` of the images at positions ``index_offset … index_offset + B − 1``."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(_SEED_WORD, tf.int64)])
    positions = tf.range(batch_size, dtype=tf.int64) + tf.cast(index_offset, tf.int64)
    return tf.map_fn(
        lambda i: tf.random.experimental.stateless_fold_in(base, i),
        positions,
        fn_output_signature=tf.TensorSpec([2], tf.int64),
    )


def adversarial_labels(target_labels: tf.Tensor, num_classes: int, seeds: tf.Tensor) -> tf.Tensor:
    """A random class ≠ target for every prior, ``[B, P]`` int32, from per-image stateless ``seeds [B, 2]``."""
    if num_classes < 2:
        raise ValueError(f"DAG needs at least 2 classes (background + 1) to pick a wrong label; got {num_classes}.")
    target_labels = tf.cast(target_labels, tf.int32)
    num_priors = tf.shape(target_labels)[1]
    shifts = tf.map_fn(
        lambda s: tf.random.stateless_uniform(
            tf.reshape(num_priors, [1]), s, minval=1, maxval=num_classes, dtype=tf.int32
        ),
        seeds,
        fn_output_signature=tf.TensorSpec([None], tf.int32),
    )
    return tf.math.floormod(target_labels + shifts, num_classes)


def dag_loss_and_active(
    logits: tf.Tensor, target_labels: tf.Tensor, adv_labels: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-image DAG loss ``[B]`` and the active mask ``[B, P]`` (priors whose arg-max ≠ adversarial label).

    ``Σ_active CE(target) − Σ_active CE(adv)``; summing per image keeps images independent (their sum is the
    reference's batch loss, and the gradient of image ``i`` only sees image ``i``'s term).
    """
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    active = tf.not_equal(predicted, adv_labels)
    diff = per_prior_cross_entropy(logits, target_labels) - per_prior_cross_entropy(logits, adv_labels)
    return tf.reduce_sum(tf.where(active, diff, 0.0), axis=1), active


def normalised_step(grad: tf.Tensor, gamma: float) -> tf.Tensor:
    """``r = γ · g / ‖g‖∞`` with the max-norm taken per image; ``r = 0`` where ``g`` is all zero (no NaN)."""
    norm = tf.reduce_max(tf.abs(grad), axis=[1, 2, 3], keepdims=True)
    return tf.math.divide_no_nan(gamma * grad, norm)


@in_graph
def dag(
    model: keras.Model,
    images: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    spec: DAGSpec = REFERENCE_DAG,
    index_offset: int | tf.Tensor = 0,
) -> tf.Tensor:
    """DAG adversarial images ``[B, H, W, 3]`` in pixel space (see the module docstring for the two variants).

    Args:
      model: an ``AttackableDetector`` (``attacks/model_protocol.py``).
      images: pixel-space RGB ``[B, H, W, 3]``.
      targets: ``{"boxes": [B, N, 4] rel_xyxy, "labels": [B, N]}`` (−1 = padding / ignored, e.g. difficult).
      spec: steps, γ, the variant, its ε, the labels' seed, the match threshold (``DAGSpec``; default the
        reference's DAG-150).
      index_offset: the position of the first image (its adversarial labels follow ``(spec.seed, position)``).
    """
    check_attackable(model, "dag", MatchingDetector)  # priors match the ground truth; num_classes draws the labels
    num_classes = model.num_classes
    threshold = model.match_threshold if spec.match_threshold is None else spec.match_threshold
    steps, gamma, epsilon, seed = spec.steps, spec.gamma, spec.epsilon, spec.seed
    clean = tf.convert_to_tensor(images, tf.float32)
    _, target_labels, _ = box_ops.match(targets["boxes"], targets["labels"], model.priors, threshold)
    seeds = image_seeds(seed, tf.shape(clean)[0], index_offset)
    adv_labels = adversarial_labels(target_labels, int(num_classes), seeds)

    def gradient_and_active(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = model(x, training=False)["logits"]
            per_image, active = dag_loss_and_active(logits, target_labels, adv_labels)
            loss = tf.reduce_sum(per_image)
        return tape.gradient(loss, x), tf.reduce_any(active, axis=1)

    total = tf.zeros_like(clean)
    if spec.variant == REFERENCE:

        def reference_body(t, current, accumulated):
            grad, _ = gradient_and_active(current)
            r = normalised_step(grad, gamma)
            # The reference restarts from the clean image each step: next = clip(x0 + r), not clip(x_t + r).
            return t + 1, tf.clip_by_value(clean + r, 0.0, 255.0), accumulated + r

        _, _, total = tf.while_loop(
            lambda t, *_: t < steps, reference_body, (tf.constant(0), clean, total), parallel_iterations=1
        )
        return tf.stop_gradient(tf.clip_by_value(clean + total, 0.0, 255.0))

    def bounded_body(t, current, running):
        grad, active = gradient_and_active(current)
        running = tf.logical_and(running, active)  # an image with no active prior is done for good
        r = normalised_step(grad, gamma) * tf.cast(running, tf.float32)[:, None, None, None]
        eta = tf.clip_by_value(current + r - clean, -epsilon, epsilon)
        return t + 1, tf.clip_by_value(clean + eta, 0.0, 255.0), running

    running0 = tf.ones([tf.shape(clean)[0]], tf.bool)
    _, adv, _ = tf.while_loop(
        lambda t, _, running: tf.logical_and(t < steps, tf.reduce_any(running)),
        bounded_body,
        (tf.constant(0), clean, running0),
        parallel_iterations=1,
    )
    return tf.stop_gradient(adv)
