"""MultiBox loss of SSD as the reference computes it (docs/reference.md#multibox-loss).

Smooth-L1 over positive priors, cross-entropy over positives plus hard negatives (3 per positive, ranked by
``logsumexp(logits) - logit[target]``), both summed and divided by the number of positives in the batch.
Used by training, by the A_cls / A_loc / con attacks and by the MTD step, so it returns the two terms separately.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import tensorflow as tf

from robustdet_tf import boxes as box_ops


def smooth_l1(diff: tf.Tensor) -> tf.Tensor:
    """Elementwise smooth-L1 with beta 1: ``0.5 d²`` if ``|d| < 1`` else ``|d| - 0.5``."""
    ad = tf.abs(diff)
    return tf.where(ad < 1.0, 0.5 * tf.square(diff), ad - 0.5)


def per_prior_cross_entropy(logits: tf.Tensor, conf_targets: tf.Tensor) -> tf.Tensor:
    """``logsumexp(logits) - logit[target]`` per prior, ``[B, P]``."""
    return tf.reduce_logsumexp(logits, axis=-1) - tf.gather(logits, conf_targets, batch_dims=2)


def hard_negatives(mining_score: tf.Tensor, positives: tf.Tensor, neg_pos_ratio: float) -> tf.Tensor:
    """Mask of mined negatives: per image the ``min(ratio·num_pos, P-1)`` highest-scoring non-positive priors.

    Positives' scores are set to zero before ranking, as in the reference, so with few negatives above zero a
    positive can in principle be ranked among the "negatives"; the union with positives makes that harmless.
    """
    score = tf.where(positives, 0.0, mining_score)
    num_priors = tf.shape(score)[1]
    order = tf.argsort(score, axis=1, direction="DESCENDING", stable=True)
    rank = tf.argsort(order, axis=1, stable=True)
    num_pos = tf.reduce_sum(tf.cast(positives, tf.int32), axis=1, keepdims=True)
    num_neg = tf.minimum(tf.cast(tf.cast(num_pos, tf.float32) * neg_pos_ratio, tf.int32), num_priors - 1)
    return rank < num_neg


def multibox_loss(
    predictions: Mapping[str, tf.Tensor],
    targets: Mapping[str, tf.Tensor],
    priors: tf.Tensor,
    threshold: float = 0.5,
    neg_pos_ratio: float = 3.0,
    variances: Sequence[float] = box_ops.VARIANCES,
    weights: tf.Tensor | None = None,
    num_positives: tf.Tensor | None = None,
    per_image: bool = False,
    matched: tuple[tf.Tensor, tf.Tensor] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Returns ``(loss_l, loss_c)`` for a batch (or, with ``per_image``, ``[B]`` each).

    Args:
      predictions: ``{"loc": [B, P, 4], "logits": [B, P, C]}``.
      targets: ``{"boxes": [B, N, 4] rel_xyxy, "labels": [B, N]}`` padded with label ``-1``.
      priors: ``[P, 4]`` centre form.
      weights: optional per-prior weights ``[B, P]`` (the reference uses them for the ``adc`` sub-batch).
      num_positives: the normaliser; defaults to this batch's positives.  Distributed training passes the global
        count so that the replicas' summed gradients equal the single-device gradient.

      per_image: each image's terms divided by its own positives, ``[B]`` each: what the loss of that image alone
        would be (attacks that keep the best iterate per image or choose per image need it).
      matched: ``(loc_t, conf_t)`` of ``boxes.match(targets, priors, threshold, variances)`` when the caller has
        matched the boxes already (a training step counts the positives from the same match: one match a step).

    A batch without any positive gives ``(0, 0)``: no negatives are mined either, and the normaliser is floored
    at one instead of dividing by zero as the reference would.
    """
    loc_pred = tf.convert_to_tensor(predictions["loc"], tf.float32)
    logits = tf.convert_to_tensor(predictions["logits"], tf.float32)
    if matched is None:
        loc_t, conf_t, _ = box_ops.match(targets["boxes"], targets["labels"], priors, threshold, variances)
    else:
        loc_t, conf_t = matched
    loc_t = tf.stop_gradient(loc_t)
    positives = conf_t > 0

    ce = per_prior_cross_entropy(logits, conf_t)
    negatives = hard_negatives(tf.stop_gradient(ce), positives, neg_pos_ratio)
    selected = tf.logical_or(positives, negatives)

    loc_per_prior = tf.reduce_sum(smooth_l1(loc_pred - loc_t), axis=-1)
    if weights is not None:
        weights = tf.cast(weights, tf.float32)
        loc_per_prior = loc_per_prior * weights
        ce = ce * weights
    pos_f = tf.cast(positives, tf.float32)
    if per_image:
        n_img = tf.maximum(tf.reduce_sum(pos_f, axis=1), 1.0)
        return (tf.reduce_sum(loc_per_prior * pos_f, axis=1) / n_img,
                tf.reduce_sum(ce * tf.cast(selected, tf.float32), axis=1) / n_img)
    loss_l = tf.reduce_sum(loc_per_prior * pos_f)
    loss_c = tf.reduce_sum(ce * tf.cast(selected, tf.float32))
    if num_positives is None:
        num_positives = tf.reduce_sum(pos_f)
    n = tf.maximum(tf.cast(num_positives, tf.float32), 1.0)
    return loss_l / n, loss_c / n
