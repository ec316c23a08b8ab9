"""Pieces of every training step: coupled (PyTorch-style) weight decay, the reference SGD, finite checks, targets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.models import training


def test_weight_decay_is_added_to_the_gradient():
    variables = [tf.Variable([1.0, -2.0]), tf.Variable([[3.0]]), tf.Variable([4.0])]
    grads = [tf.constant([0.5, 0.5]), tf.constant([[-1.0]]), None]  # a variable without gradient stays without
    got = training.add_weight_decay(grads, variables, 0.1)
    np.testing.assert_allclose(got[0].numpy(), [0.5 + 0.1, 0.5 - 0.2], rtol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), [[-1.0 + 0.3]], rtol=1e-6)
    assert got[2] is None
    assert training.add_weight_decay(grads, variables, 0.0) == grads


def test_weight_decay_survives_the_loss_scale_of_mixed_float16():
    """``LossScaleOptimizer.apply`` divides every gradient by the loss scale; the decay is scaled with the loss's
    gradient, so a step moves ``w`` by ``lr·(g + wd·w)`` as in float32 (unscaled, it moved by ``lr·wd·w / 32768``)."""
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5))
    w = tf.Variable([2.0, -4.0])
    optimizer.build([w])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(3.0 * w)  # gradient 3 everywhere
    grads = training.gradients(optimizer, loss, tape, [w], weight_decay=0.1)
    assert float(training.loss_scale(optimizer, tf.float32)) > 1  # the gradients really were scaled
    optimizer.apply(grads, [w])
    np.testing.assert_allclose(w.numpy(), [2.0 - 0.5 * (3 + 0.2), -4.0 - 0.5 * (3 - 0.4)], rtol=1e-6)
    plain = keras.optimizers.SGD(0.5)
    assert training.loss_scale(plain, tf.float32) is None


def test_weight_decay_follows_the_gradient_dtype():
    got = training.add_weight_decay([tf.constant([1.0], tf.float16)], [tf.Variable([2.0])], 0.5)
    assert got[0].dtype == tf.float16 and float(got[0][0]) == 2.0


def test_sgd_is_pytorch_momentum_sgd_without_decoupled_decay():
    optimizer = training.sgd(learning_rate=0.1, momentum=0.9)
    assert optimizer.weight_decay is None  # the decay is coupled, added by the step
    w = tf.Variable([1.0, 2.0])
    want, velocity = w.numpy(), np.zeros(2)
    for grad in ([1.0, -1.0], [0.5, 2.0], [0.0, 0.0]):
        optimizer.apply_gradients([(tf.constant(grad), w)])
        velocity = 0.9 * velocity + np.array(grad)  # torch.optim.SGD: v = m·v + g, w -= lr·v
        want = want - 0.1 * velocity
        np.testing.assert_allclose(w.numpy(), want, rtol=1e-6)
    default = training.sgd()
    assert float(default.learning_rate) == pytest.approx(1e-3) and default.momentum == 0.9


def test_check_finite_passes_finite_terms_and_names_a_non_finite_one():
    step = tf.constant(7, tf.int64)
    assert len(training.check_finite({"a": tf.constant(1.0), "b": tf.constant([2.0, 3.0])}, step)) == 2
    message = r"(?s)non-finite loss term b at optimiser step.*\b7\b.*inf"  # the name, the step and the value
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        training.check_finite({"a": tf.constant(1.0), "b": tf.constant([2.0, np.inf])}, step)


def test_check_finite_in_graph_fails_only_through_its_ops():
    """In a graph the assertions are ops: the update guarded by them must not run when a term is NaN."""
    w = tf.Variable(0.0)

    @tf.function
    def guarded_update(value):
        checks = training.check_finite({"loss_c": value}, tf.constant(3, tf.int64))
        with tf.control_dependencies(checks):
            w.assign_add(1.0)

    guarded_update(tf.constant(2.0))
    assert float(w) == 1.0
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite loss term loss_c at optimiser step"):
        guarded_update(tf.constant(np.nan, tf.float32))
    assert float(w) == 1.0


def test_as_targets_casts_and_drops_other_keys():
    targets = {"boxes": np.zeros((1, 2, 4), np.float64), "labels": np.array([[3, -1]], np.int64),
               "difficult": np.zeros((1, 2), bool), "image_id": np.array(["a"])}
    got = training.as_targets(targets)
    assert set(got) == {"boxes", "labels"}
    assert got["boxes"].dtype == tf.float32 and got["labels"].dtype == tf.int32
    np.testing.assert_array_equal(got["labels"].numpy(), [[3, -1]])
