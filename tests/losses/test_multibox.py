"""MultiBox loss: the spec's check value, hard-negative mining, weights, and the no-positive case."""

import numpy as np
import tensorflow as tf

from robustdet_tf.losses.multibox import hard_negatives, multibox_loss, smooth_l1
from robustdet_tf.priors import ssd300_priors

PRIORS = ssd300_priors("voc")
TARGETS = {
    "boxes": tf.constant([[[0.1, 0.2, 0.5, 0.7], [0.6, 0.1, 0.9, 0.4]]]),
    "labels": tf.constant([[4, 11]]),
}


def zeros(batch=1, classes=21):
    return {"loc": tf.zeros([batch, 8732, 4]), "logits": tf.zeros([batch, 8732, classes])}


def test_check_value_of_the_spec():
    loss_l, loss_c = multibox_loss(zeros(), TARGETS, PRIORS)
    np.testing.assert_allclose([float(loss_l), float(loss_c)], [2.357737, 12.178090], rtol=1e-6)
    np.testing.assert_allclose(float(loss_c), 4 * np.log(21), rtol=1e-6)


def test_smooth_l1():
    np.testing.assert_allclose(smooth_l1(tf.constant([-2.0, -0.5, 0.0, 0.5, 3.0])).numpy(), [1.5, 0.125, 0, 0.125, 2.5])


def test_hard_negatives_pick_the_highest_scores():
    score = tf.constant([[0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7]])
    positives = tf.constant([[False, True, False, False, False, False, False]])
    neg = hard_negatives(score, positives, 3.0).numpy()[0]
    assert list(np.flatnonzero(neg)) == [2, 4, 6]  # the top three non-positive scores
    # never more than P - 1 negatives
    assert hard_negatives(score, tf.fill([1, 7], True), 3.0).numpy().sum() == 6


def test_loss_uses_positives_and_mined_negatives_only():
    # Make one far background prior extremely confident in an object class: it must be mined and dominate loss_c.
    logits = np.zeros([1, 8732, 21], np.float32)
    logits[0, 100, 3] = 50.0
    _, base = multibox_loss(zeros(), TARGETS, PRIORS)
    _, boosted = multibox_loss({"loc": tf.zeros([1, 8732, 4]), "logits": tf.constant(logits)}, TARGETS, PRIORS)
    expected = (np.log(20 + np.exp(50.0)) - np.log(21)) / 25  # -log p_bg of that prior, instead of ln 21
    np.testing.assert_allclose(float(boosted) - float(base), expected, rtol=1e-4)


def test_weights_scale_terms_and_batch_normalisation():
    two = {k: tf.concat([v, v], 0) for k, v in TARGETS.items()}
    weights = tf.constant(np.stack([np.ones(8732), 3 * np.ones(8732)]), tf.float32)
    loss_l, loss_c = multibox_loss(zeros(2), two, PRIORS, weights=weights)
    # (1·x + 3·x) / 50 = 2x / 25 = 2 · single-image loss
    np.testing.assert_allclose([float(loss_l), float(loss_c)], [2 * 2.357737, 2 * 12.178090], rtol=1e-5)


def test_no_positives_gives_zero_not_nan():
    empty = {"boxes": tf.zeros([2, 3, 4]), "labels": -tf.ones([2, 3], tf.int32)}
    loss_l, loss_c = multibox_loss(zeros(2), empty, PRIORS)
    assert float(loss_l) == 0.0 and float(loss_c) == 0.0


def test_gradient_reaches_predictions_in_graph():
    logits = tf.Variable(tf.zeros([1, 8732, 21]))
    loc = tf.Variable(tf.zeros([1, 8732, 4]))

    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss_l, loss_c = multibox_loss({"loc": loc, "logits": logits}, TARGETS, PRIORS)
            total = loss_l + loss_c
        return tape.gradient(total, [loc, logits])

    g_loc, g_logits = grads()
    assert int(tf.math.count_nonzero(tf.reduce_sum(tf.abs(g_loc), -1))) == 25
    assert int(tf.math.count_nonzero(tf.reduce_sum(tf.abs(g_logits), -1))) == 100  # 25 positives + 75 negatives


def test_per_image_terms_are_each_image_alone():
    """``per_image`` gives every image the loss it would have as a batch of one (its own positives normalise)."""
    rng = np.random.default_rng(0)
    predictions = {"loc": tf.constant(rng.normal(size=(3, 8732, 4)), tf.float32),
                   "logits": tf.constant(rng.normal(size=(3, 8732, 21)), tf.float32)}
    targets = {"boxes": tf.constant([[[0.1, 0.2, 0.5, 0.7], [0.6, 0.1, 0.9, 0.4]],
                                     [[0.3, 0.3, 0.8, 0.9], [0.0, 0.0, 0.0, 0.0]],
                                     [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]),
               "labels": tf.constant([[4, 11], [2, -1], [-1, -1]])}
    loss_l, loss_c = multibox_loss(predictions, targets, PRIORS, per_image=True)
    assert loss_l.shape == loss_c.shape == (3,)
    for i in range(3):
        alone = multibox_loss({k: v[i:i + 1] for k, v in predictions.items()},
                              {k: v[i:i + 1] for k, v in targets.items()}, PRIORS)
        np.testing.assert_allclose([loss_l[i], loss_c[i]], [float(a) for a in alone], rtol=1e-5)
    assert float(loss_l[2]) == float(loss_c[2]) == 0.0  # background only: no positives, no mined negatives
    batch_l, _ = multibox_loss(predictions, targets, PRIORS)
    assert abs(float(batch_l) - float(tf.reduce_sum(loss_l))) > 1e-3  # the batch normalises by all positives
