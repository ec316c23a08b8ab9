"""Attack objectives (docs/reference.md#attack-objectives-and-mtd): the scalar each PGD step ascends, computed in test
mode on the raw heads."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks.objectives import OBJECTIVES, TOG_OBJECTIVES, detection_terms, make_objective
from robustdet_tf.losses.class_wise import class_wise_loss
from robustdet_tf.losses.multibox import multibox_loss
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.export.tiny_models import tiny_robustdet
from tests.helpers import rectangles

MATCH_THRESHOLD = 0.35  # not the default 0.5: the objectives must use the model's own matching threshold


@pytest.fixture(scope="module")
def model_and_batch():
    keras.utils.set_random_seed(0)  # the weights, whichever tests ran before in this worker
    model = SSD(**TINY_SSD, match_threshold=MATCH_THRESHOLD)
    images, targets = rectangles(3, 64, seed=4)
    return model, tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


def multibox_terms(model, images, targets):
    """Independent of the objectives module: the MultiBox terms of the test-mode outputs."""
    return multibox_loss(model(images, training=False), targets, model.priors, threshold=MATCH_THRESHOLD)


def test_cls_and_loc_are_the_multibox_terms(model_and_batch):
    model, x, t = model_and_batch
    loss_l, loss_c = (float(v) for v in multibox_terms(model, x, t))
    assert loss_l > 0 and loss_c > 0 and abs(loss_l - loss_c) > 1e-3  # so a swap of the two would show
    np.testing.assert_allclose([float(v) for v in detection_terms(model, x, t)], [loss_l, loss_c], rtol=1e-6)
    assert float(make_objective("cls")(model, x, t)) == pytest.approx(loss_c, rel=1e-6)
    assert float(make_objective("loc")(model, x, t)) == pytest.approx(loss_l, rel=1e-6)


def test_con_weighs_the_two_terms(model_and_batch):
    model, x, t = model_and_batch
    loss_l, loss_c = (float(v) for v in multibox_terms(model, x, t))
    assert float(make_objective("con")(model, x, t)) == pytest.approx(loss_l + loss_c, rel=1e-6)
    assert float(make_objective("con", (2.0, 0.5))(model, x, t)) == pytest.approx(2 * loss_l + 0.5 * loss_c,
                                                                                   rel=1e-6)
    assert float(make_objective("con", (0.0, 1.0))(model, x, t)) == pytest.approx(loss_c, rel=1e-6)


def test_cwa_is_the_class_wise_loss_at_the_model_threshold(model_and_batch):
    model, x, t = model_and_batch
    outputs = model(x, training=False)
    want = float(class_wise_loss(outputs, t, model.priors, threshold=MATCH_THRESHOLD))
    assert float(make_objective("cwa")(model, x, t)) == pytest.approx(want, rel=1e-6)
    assert abs(float(class_wise_loss(outputs, t, model.priors, threshold=0.5)) - want) > 1e-3  # threshold matters
    assert abs(want - float(make_objective("con")(model, x, t))) > 1e-3


@pytest.mark.parametrize("name", OBJECTIVES + TOG_OBJECTIVES)
def test_objectives_have_a_pixel_gradient_in_graph(model_and_batch, name):
    model, x, t = model_and_batch
    objective = make_objective(name)

    @tf.function
    def value_and_gradient(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            value = objective(model, images, t)
        return value, tape.gradient(value, images)

    value, grad = value_and_gradient(x)
    assert float(value) == pytest.approx(float(objective(model, x, t)), rel=1e-5)
    assert grad.shape == x.shape and float(tf.reduce_max(tf.abs(grad))) > 0


def test_objectives_run_the_model_in_test_mode():
    """RobustDet*: in training mode the AID uses batch statistics and CFR samples z, so every call differs; the
    objectives must see the deterministic test-mode outputs (AID on running statistics, CFR μ)."""
    model = tiny_robustdet(cfr=True)
    images, targets = rectangles(2, 64, seed=5)
    x, t = tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}
    train_mode = model.detection_loss(model(x, training=True), t)  # first: it moves the BN running statistics
    test_mode = model.detection_loss(model(x, training=False), t)
    assert abs(float(train_mode[1]) - float(test_mode[1])) > 1e-4
    for name, index in (("loc", 0), ("cls", 1)):
        assert float(make_objective(name)(model, x, t)) == pytest.approx(float(test_mode[index]), rel=1e-6)
    log_background = tf.nn.log_softmax(model(x, training=False)["logits"])[..., 0]
    assert float(make_objective("tog_vanishing")(model, x, t)) == pytest.approx(
        float(tf.reduce_mean(log_background)), rel=1e-6)


@pytest.mark.parametrize("name", ["mtd", "clean", "CLS", ""])
def test_unknown_objective_is_refused_with_the_choices(name):
    with pytest.raises(ValueError, match=rf"unknown attack objective '{name}'; choose one of \('cls', 'loc'"):
        make_objective(name)
