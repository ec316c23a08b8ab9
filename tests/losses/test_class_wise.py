"""Class-wise loss of CWAT and the CWA attack (docs/reference.md#class-wise-loss): the mean over present classes of
per-class means."""

import numpy as np
import tensorflow as tf

from robustdet_tf import boxes
from robustdet_tf.losses.class_wise import class_wise_loss
from robustdet_tf.losses.multibox import smooth_l1
from robustdet_tf.priors import ssd300_priors

PRIORS = ssd300_priors("voc")
TARGETS = {"boxes": tf.constant([[[0.1, 0.2, 0.5, 0.7], [0.6, 0.1, 0.9, 0.4]]]), "labels": tf.constant([[4, 11]])}


def test_class_wise_loss_averages_class_means():
    zeros = {"loc": tf.zeros([1, 8732, 4]), "logits": tf.zeros([1, 8732, 21])}
    loc_t, conf_t, _ = boxes.match(TARGETS["boxes"], TARGETS["labels"], PRIORS)
    per_prior = np.log(21) + tf.reduce_sum(smooth_l1(-loc_t), -1).numpy()[0]
    conf = conf_t.numpy()[0]
    expected = np.mean([per_prior[conf == 5].mean(), per_prior[conf == 12].mean()])  # 13 and 12 priors
    np.testing.assert_allclose(float(class_wise_loss(zeros, TARGETS, PRIORS)), expected, rtol=1e-5)
    # Not the plain positive mean: the two classes have different counts.
    assert abs(expected - per_prior[conf > 0].mean()) > 1e-4


def test_class_wise_loss_without_positives_is_zero():
    empty = {"boxes": tf.zeros([1, 2, 4]), "labels": -tf.ones([1, 2], tf.int32)}
    zeros = {"loc": tf.zeros([1, 8732, 4]), "logits": tf.zeros([1, 8732, 21])}
    assert float(class_wise_loss(zeros, empty, PRIORS)) == 0.0



def test_per_image_class_wise_loss_is_each_image_alone():
    """The reference's evaluation attacks one image at a time: ``per_image`` gives each image's loss as its batch of
    one would, where the batch loss averages the classes over all images (another number)."""
    rng = np.random.default_rng(0)
    predictions = {"loc": tf.constant(rng.normal(size=[3, 8732, 4]), tf.float32),
                   "logits": tf.constant(rng.normal(size=[3, 8732, 21]), tf.float32)}
    targets = {"boxes": tf.constant([[[0.1, 0.2, 0.5, 0.7], [0.6, 0.1, 0.9, 0.4]],
                                     [[0.2, 0.2, 0.6, 0.6], [0.0, 0.0, 0.0, 0.0]],
                                     [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]),
               "labels": tf.constant([[4, 11], [4, -1], [-1, -1]])}  # the last image has no object
    alone = [float(class_wise_loss({k: v[i:i + 1] for k, v in predictions.items()},
                                   {k: v[i:i + 1] for k, v in targets.items()}, PRIORS)) for i in range(3)]
    per_image = class_wise_loss(predictions, targets, PRIORS, per_image=True).numpy()
    assert per_image.shape == (3,)
    np.testing.assert_allclose(per_image, alone, rtol=1e-6)
    assert per_image[2] == 0.0 and min(per_image[:2]) > 0
    batch = float(class_wise_loss(predictions, targets, PRIORS))
    assert abs(batch - np.mean(alone[:2])) > 1e-3  # class 4 spans two images: the batch average is another loss
