"""Class-wise detection loss of CWAT, used by the CWA attack and CWAT training (docs/reference.md#class-wise-loss).

Adversarial training against the plain MultiBox loss lets frequent classes dominate the attack; CWAT averages the
loss *per class* first so every class present in the batch counts equally.  Positives only, no hard negatives.

The classes are averaged over the whole batch, as the reference's training batches do.  Its evaluation
(``eval_attack.py``) attacks one image at a time, so there each image's classes are averaged alone:
``per_image=True`` gives that loss for every image of a batch at once, ``[B]``, the same as the batch of one.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

from robustdet_tf import boxes as box_ops
from robustdet_tf.losses.multibox import per_prior_cross_entropy, smooth_l1


def class_wise_loss(
    predictions: Mapping[str, tf.Tensor],
    targets: Mapping[str, tf.Tensor],
    priors: tf.Tensor,
    threshold: float = 0.5,
    per_image: bool = False,
) -> tf.Tensor:
    """Mean over the classes present of (mean over that class' positive priors of CE + smooth-L1 sum).

    Returns 0 for a batch without positives; with ``per_image`` the loss of each image alone, ``[B]`` (0 for an
    image without positives).
    """
    logits = tf.convert_to_tensor(predictions["logits"], tf.float32)
    loc = tf.convert_to_tensor(predictions["loc"], tf.float32)
    loc_t, conf_t, _ = box_ops.match(targets["boxes"], targets["labels"], priors, threshold)
    per_prior = per_prior_cross_entropy(logits, conf_t) + tf.reduce_sum(smooth_l1(loc - loc_t), axis=-1)
    positives = conf_t > 0
    num_classes = tf.shape(logits)[-1]
    groups = num_classes
    segments = conf_t
    if per_image:  # one segment per (image, class)
        batch = tf.shape(conf_t)[0]
        groups = batch * num_classes
        segments = tf.range(batch, dtype=conf_t.dtype)[:, None] * tf.cast(num_classes, conf_t.dtype) + conf_t
    ids = tf.boolean_mask(segments, positives)
    sums = tf.math.unsorted_segment_sum(tf.boolean_mask(per_prior, positives), ids, groups)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(ids, tf.float32), ids, groups)
    means = tf.math.divide_no_nan(sums, counts)
    present = tf.cast(counts > 0, tf.float32)
    if per_image:
        shape = tf.stack([batch, num_classes])
        means, present = tf.reshape(means, shape), tf.reshape(present, shape)
        return tf.math.divide_no_nan(tf.reduce_sum(means, axis=-1), tf.reduce_sum(present, axis=-1))
    return tf.math.divide_no_nan(tf.reduce_sum(means), tf.reduce_sum(present))
