"""Class-wise detection loss of CWAT, used by the CWA attack and CWAT training (spec §4.2).

Adversarial training against the plain MultiBox loss lets frequent classes dominate the attack; CWAT averages the
loss *per class* first so every class present in the batch counts equally.  Positives only, no hard negatives.
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
) -> tf.Tensor:
    """Mean over the classes present of (mean over that class' positive priors of CE + smooth-L1 sum).

    Returns 0 for a batch without positives.
    """
    logits = tf.convert_to_tensor(predictions["logits"], tf.float32)
    loc = tf.convert_to_tensor(predictions["loc"], tf.float32)
    loc_t, conf_t, _ = box_ops.match(targets["boxes"], targets["labels"], priors, threshold)
    per_prior = per_prior_cross_entropy(logits, conf_t) + tf.reduce_sum(smooth_l1(loc - loc_t), axis=-1)
    positives = conf_t > 0
    num_classes = tf.shape(logits)[-1]
    classes = tf.boolean_mask(conf_t, positives)
    sums = tf.math.unsorted_segment_sum(tf.boolean_mask(per_prior, positives), classes, num_classes)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(classes, tf.float32), classes, num_classes)
    present = counts > 0
    means = tf.math.divide_no_nan(sums, counts)
    return tf.math.divide_no_nan(tf.reduce_sum(means), tf.reduce_sum(tf.cast(present, tf.float32)))
