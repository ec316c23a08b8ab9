"""AID triplet loss (docs/reference.md#aid-triplet-loss): mining distance, 240 triplets for 16 + 16, the hinge value,
the paper option."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.losses.aid_triplet import aid_triplet_loss, js_type_distance


def test_js_mining_distance_bound_for_k4():
    d = js_type_distance(tf.constant([1.0, 0, 0, 0]), tf.constant([0, 1.0, 0, 0]))
    np.testing.assert_allclose(float(d), np.log(2) / 2, rtol=1e-5)  # 0.34657 < margin 0.6
    assert float(js_type_distance(tf.constant([0.25] * 4), tf.constant([0.25] * 4))) == pytest.approx(0.0, abs=1e-7)


def test_every_pair_gets_a_triplet_for_16_plus_16():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(32, 4))
    pi = tf.nn.softmax(tf.constant(logits, tf.float32))
    labels = tf.constant([0] * 16 + [1] * 16)
    loss, count = aid_triplet_loss(pi, labels, seed=1)
    assert int(count) == 240
    assert float(loss) > 0


def test_hinge_value_on_a_hand_made_batch():
    # Two clean (label 0) and two adversarial (label 1) mixtures. Both negatives of each anchor are identical, so
    # the random choice does not matter: pairs (0,1) and (2,3).
    e = tf.constant([[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.1, 0.1, 0.1, 0.7]])
    labels = tf.constant([0, 0, 1, 1])
    loss, count = aid_triplet_loss(e, labels, margin=0.6, seed=3)
    d = lambda a, b: float(np.sum((np.asarray(a) - np.asarray(b)) ** 2))  # noqa: E731
    en = e.numpy()
    t1 = max(0.0, d(en[0], en[1]) - d(en[0], en[2]) + 0.6)  # anchor 0, positive 1, negative 2 (= 3)
    t2 = max(0.0, d(en[2], en[3]) - d(en[2], en[0]) + 0.6)  # anchor 2, positive 3; negatives 0 or 1 differ...
    t2b = max(0.0, d(en[2], en[3]) - d(en[2], en[1]) + 0.6)
    assert int(count) == 2
    assert float(loss) in (pytest.approx((t1 + t2) / 2, rel=1e-5), pytest.approx((t1 + t2b) / 2, rel=1e-5))


def test_paper_js_hinge_option_and_bad_option():
    e = tf.nn.softmax(tf.random.stateless_normal([8, 4], seed=[1, 2]))
    labels = tf.constant([0] * 4 + [1] * 4)
    euclid, _ = aid_triplet_loss(e, labels, seed=5)
    js, _ = aid_triplet_loss(e, labels, hinge_distance="js", seed=5)
    assert float(euclid) != pytest.approx(float(js))
    with pytest.raises(ValueError, match="hinge_distance"):
        aid_triplet_loss(e, labels, hinge_distance="l1")


def test_fallback_without_pairs_is_constant():
    e = tf.constant([[0.25] * 4, [0.25] * 4])
    loss, count = aid_triplet_loss(e, tf.constant([0, 1]), seed=0)
    assert int(count) == 0 and float(loss) == pytest.approx(0.1)


def test_gradient_flows_to_the_mixtures():
    e = tf.Variable(tf.nn.softmax(tf.random.stateless_normal([8, 4], seed=[3, 4])))
    with tf.GradientTape() as tape:
        loss, _ = aid_triplet_loss(e, tf.constant([0] * 4 + [1] * 4), seed=1)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(loss, e)))) > 0
