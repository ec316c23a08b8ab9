"""Attack objectives: the scalar a PGD step ascends (docs/reference.md#attack-objectives-and-mtd).

Each objective is a function of ``(model, images, targets)`` that runs the model in test mode
(``training=False``: AID batch norm on running statistics, CFR uses μ) while reading the raw head outputs.
``make_objective`` gives the batch scalar the reference ascends; ``make_per_image_objective`` gives ``[B]`` values,
each image's loss as if it were alone, for attacks that keep the best iterate per image (restarts, APGD) or choose
per image (MTD per image, the worst-case column).  In test mode images do not interact, so the sign of the batch
gradient equals the sign of each image's own gradient and both forms take the same PGD steps.

TOG's targeted attacks (Chow et al. 2020, "Adversarial Objectness Gradient Attacks in Real-time Object Detection
Systems") are objectives of the same kind.  TOG reads a YOLO objectness score; an SSD has none, so the objectness of
prior ``p`` is ``1 − p_bg(p)`` with ``p_bg = softmax(logits_p)[0]`` (class 0 = background).  Each value below is
*ascended*; an image's value is the mean over its ``P`` priors (the batch objective: the mean over the batch):

* ``tog_vanishing``   — ``(1/P) Σ_p log p_bg(p)``: every prior towards background, i.e. the cross-entropy of all
  priors to the background class descended (TOG's vanishing loss: its detector's loss on an empty target).  Its
  gradient on a prior's background logit is ``1 − p_bg``: the detections pull hardest.
* ``tog_fabrication`` — ``(1/P) Σ_p −log p_bg(p)``: every prior away from background, the same cross-entropy
  ascended (TOG's fabrication).  Not ``(1/P) Σ_p log(1 − p_bg(p))``: for a confidently-background prior that is
  ``≈ logit_obj − logit_bg``, linear with full weight, so the hundreds of priors far from becoming an object
  outvote the few near it and the budget is spread thin (on the tests' tiny detector, 51 clean detections above
  0.5 became 69 with it, 77 with this form); ``−log p_bg`` weighs each prior by its objectness ``1 − p_bg``.
* ``tog_mislabeling`` — ``−(loss_l + loss_c)``: the model's MultiBox loss towards the mislabelled targets
  *descended* (hard negatives included, so priors that are no target stay background; TOG's own loss has only the
  positives' terms).  The targets (``mislabeled_targets``) are the model's own detections on the clean image, not
  the ground truth: TOG's definition, which needs no labels and keeps the boxes the model saw (towards the ground
  truth the localisation term would move the boxes onto the annotation).  Each label becomes the most likely wrong
  class of the detecting prior (TOG's ``ML`` mode; its ``LL`` takes the least likely): the cheapest label flip,
  so the one a fixed budget achieves most often.  The attacks (``pgd.pgd``, ``pgd.attack_step``,
  ``strong.strong_pgd``) make the targets from the clean images (``aimed_targets``) and pass them as ``targets``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf import boxes as box_ops
from robustdet_tf.detections import greedy_nms_mask
from robustdet_tf.losses.class_wise import class_wise_loss

Objective = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]
Outputs = Mapping[str, tf.Tensor]

OBJECTIVES = ("cls", "loc", "con", "cwa")
TOG_OBJECTIVES = ("tog_vanishing", "tog_fabrication", "tog_mislabeling")

TOG_SCORE_THRESHOLD = 0.5
"""A clean detection becomes a mislabeling target when its class score exceeds this: TOG's detection threshold for
SSD (its ``confidence_thresh_default``).  The evaluation's 0.01 would turn background clutter into targets, and the
attack would then fabricate confident wrong-class boxes instead of relabelling objects.  Above 0.5 at most one class
of a prior qualifies, so a prior's best object class is exactly its detection."""
TOG_CANDIDATES = 200
"""The best-scoring priors that enter NMS (the reference's ``pre_nms_top_k``, here over all classes): a fixed size, so
the targets are made in the graph."""
TOG_NMS_IOU = 0.45
"""Per-class NMS of the targets, as the reference's detector (``detections.postprocess``)."""
TOG_MAX_TARGETS = 50
"""Mislabelled detections kept per image, the highest-scoring: the padded size of the targets the MultiBox loss matches
to the priors at every step (a fixed cap keeps them one dense tensor; detections past it are not relabelled)."""


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown attack objective {name!r}; choose one of {OBJECTIVES + TOG_OBJECTIVES}")


def log_background(outputs: Outputs) -> tf.Tensor:
    """``log p_bg`` of every prior, ``[B, P]`` (``log_softmax``: finite however confident the prior)."""
    return tf.nn.log_softmax(tf.cast(outputs["logits"], tf.float32), axis=-1)[..., 0]


_TOG_PRIOR_TERMS: dict[str, Callable[[Outputs], tf.Tensor]] = {
    "tog_vanishing": log_background,  # ascended: every prior towards background
    "tog_fabrication": lambda outputs: -log_background(outputs),  # ascended: every prior away from it
}


def mislabeled_targets(model: keras.Model, clean: tf.Tensor) -> dict[str, tf.Tensor]:
    """TOG-mislabeling's targets: the model's detections on ``clean`` with each label replaced by its most likely
    wrong class, as dense targets ``{"boxes": [B, N, 4] rel_xyxy, "labels": [B, N]}`` (``N = TOG_MAX_TARGETS``,
    label −1 = padding; an image without detections gets none and its attack has nothing to relabel).

    A detection is a prior whose best object class scores above ``TOG_SCORE_THRESHOLD``, among the
    ``TOG_CANDIDATES`` best-scoring priors, kept by per-class NMS at ``TOG_NMS_IOU``; its box is the prior's decoded
    clean box.  The wrong class is the argmax of the prior's object-class probabilities without the detected class
    (ties: the lowest class), so the targets are deterministic.  Graph code, per image: each image's targets are
    those it has alone."""
    if model.num_classes < 3:
        raise ValueError(f"tog_mislabeling needs at least two object classes to swap; the model has "
                         f"{model.num_classes - 1}")
    clean = tf.convert_to_tensor(clean, tf.float32)
    outputs = model(clean, training=False)
    probs = tf.nn.softmax(tf.cast(outputs["logits"], tf.float32), axis=-1)[..., 1:]  # [B, P, C-1] objects
    boxes = box_ops.decode(tf.cast(outputs["loc"], tf.float32), model.priors)  # [B, P, 4] rel_xyxy
    score = tf.reduce_max(probs, axis=-1)
    label = tf.argmax(probs, axis=-1, output_type=tf.int32)  # 0-based object class
    k = min(TOG_CANDIDATES, int(model.priors.shape[0]))
    top_score, index = tf.math.top_k(score, k=k, sorted=True)  # [B, K]
    top_label = tf.gather(label, index, batch_dims=1)
    top_boxes = tf.gather(boxes, index, batch_dims=1)
    top_probs = tf.gather(probs, index, batch_dims=1)  # [B, K, C-1]
    classes = tf.range(model.num_classes - 1, dtype=tf.int32)[None, :, None]  # NMS per class, as the detector
    of_class = tf.logical_and(top_label[:, None, :] == classes, (top_score > TOG_SCORE_THRESHOLD)[:, None, :])
    per_class_boxes = tf.broadcast_to(top_boxes[:, None], tf.concat([tf.shape(of_class), [4]], axis=0))
    keep = tf.reduce_any(greedy_nms_mask(per_class_boxes, of_class, TOG_NMS_IOU), axis=1)  # [B, K]
    own = tf.one_hot(top_label, model.num_classes - 1, on_value=True, off_value=False)
    wrong = tf.argmax(tf.where(own, -1.0, top_probs), axis=-1, output_type=tf.int32)
    kept_score, order = tf.math.top_k(tf.where(keep, top_score, -1.0), k=min(TOG_MAX_TARGETS, k), sorted=True)
    kept = kept_score > 0.0
    return {
        "boxes": tf.stop_gradient(tf.where(kept[..., None], tf.gather(top_boxes, order, batch_dims=1), 0.0)),
        "labels": tf.where(kept, tf.gather(wrong, order, batch_dims=1), -1),
    }


def aimed_targets(method: str, model: keras.Model, clean: tf.Tensor,
                  targets: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    """The targets the objective of ``method`` is computed on: ``targets`` (the ground truth), except for
    ``tog_mislabeling``, which aims at the mislabelled detections of ``clean`` (``mislabeled_targets``)."""
    return mislabeled_targets(model, clean) if method == "tog_mislabeling" else targets


def detection_terms(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor]):
    """``(loss_l, loss_c)`` of the model on ``images`` in test mode."""
    return model.detection_loss(model(images, training=False), targets)


def make_objective(name: str, con_weights: Sequence[float] = (1.0, 1.0), cwa_per_image: bool = False) -> Objective:
    """The objective maximised by an attack: ``cls`` (A_cls), ``loc`` (A_loc), ``con`` (weighted sum), ``cwa`` or
    one of TOG's (module docstring; ``tog_mislabeling`` expects ``aimed_targets``, not the ground truth).

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
    if name in _TOG_PRIOR_TERMS:  # the mean over the batch's priors: each image's mean over its own, scaled by 1/B
        term = _TOG_PRIOR_TERMS[name]
        return lambda model, x, t: tf.reduce_mean(term(model(x, training=False)))
    if name == "tog_mislabeling":
        return lambda model, x, t: -tf.add_n(detection_terms(model, x, t))
    raise _unknown(name)


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
    if name in _TOG_PRIOR_TERMS:
        term = _TOG_PRIOR_TERMS[name]
        return lambda model, outputs, targets: tf.reduce_mean(term(outputs), axis=1)
    if name not in OBJECTIVES + TOG_OBJECTIVES:
        raise _unknown(name)

    def loss(model, outputs, targets):
        loss_l, loss_c = per_image_terms(model, outputs, targets)
        return {"cls": loss_c, "loc": loss_l, "con": con_weights[0] * loss_l + con_weights[1] * loss_c,
                "tog_mislabeling": -(loss_l + loss_c)}[name]

    return loss


def make_per_image_objective(name: str, con_weights: Sequence[float] = (1.0, 1.0)) -> Objective:
    """``(model, images, targets) → [B]``: objective ``name`` of each image alone, in test mode."""
    score = per_image_loss_of_outputs(name, con_weights)
    return lambda model, x, t: score(model, model(x, training=False), t)
