"""Loss conflict: the copy is independent of the model, a step on a batch lowers that batch's loss, and the four
changes are the differences of the per-image losses before and after."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.analysis.loss_conflict import (
    CHANGES,
    clone_model,
    loss_conflict,
    make_optimizer,
    summarize,
    train_copy,
)
from robustdet_tf.analysis.per_image import per_image_terms
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles


def _batch(n, seed):
    images, targets = rectangles(n, 64, seed=seed)
    return tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


@pytest.fixture(scope="module")
def ssd():
    tf.keras.utils.set_random_seed(0)
    return SSD(**TINY_SSD)


def _batch_loss(model, images, targets):
    return float(tf.function(lambda x: tf.add_n(model.detection_loss(model(x, training=False), targets)))(images))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_on_a_batch_lowers_that_batch_loss_and_leaves_the_model_alone(ssd, optimizer):
    images, targets = _batch(4, seed=3)
    weights = [w.copy() for w in ssd.get_weights()]
    before = _batch_loss(ssd, images, targets)
    copy, losses = train_copy(ssd, images, targets, steps=1, optimizer=optimizer, learning_rate=1e-4)
    assert copy is not ssd and losses[0] == pytest.approx(before, rel=1e-5)
    assert _batch_loss(copy, images, targets) < before
    assert all(np.array_equal(a, b) for a, b in zip(ssd.get_weights(), weights))  # the user's model is untouched
    assert _batch_loss(ssd, images, targets) == before


def test_a_robustdet_copy_computes_what_the_model_computes():
    model = RobustDet(**TINY_SSD, aid_width=8, decoder_width=16, adversarial={"method": "cls"})
    copy = clone_model(model)
    images, _ = _batch(2, seed=4)
    for key, value in model(images, training=False).items():
        np.testing.assert_array_equal(copy(images, training=False)[key].numpy(), value.numpy())
    assert not {id(v) for v in copy.weights} & {id(v) for v in model.weights}


def test_the_four_changes_are_per_image_differences(ssd):
    train_images, train_targets = _batch(4, seed=5)
    images, targets = _batch(3, seed=6)
    attack = tf.function(lambda x, t: pgd(ssd, x, t, AttackSpec(steps=1)))
    train = (train_images, attack(train_images, train_targets), train_targets)
    measure = (images, attack(images, targets), targets)
    result = loss_conflict(ssd, train, [measure], steps=2, learning_rate=1e-4)
    assert set(CHANGES) <= set(result) and all(result[c].shape == (3,) for c in CHANGES)
    loss = tf.function(lambda x: tf.reduce_sum(per_image_terms(ssd, x, targets), -1))
    np.testing.assert_allclose(result["before_clean"], loss(images).numpy(), rtol=1e-5)
    np.testing.assert_allclose(result["before_adv"], loss(measure[1]).numpy(), rtol=1e-5)
    copy, _ = train_copy(ssd, train[1], train_targets, steps=2, learning_rate=1e-4)  # the adversarial run, again
    after = tf.function(lambda x: tf.reduce_sum(per_image_terms(copy, x, targets), -1))
    np.testing.assert_allclose(result["adv_to_clean"], after(images).numpy() - result["before_clean"], rtol=1e-4,
                               atol=1e-5)
    assert result["train_loss_adv"].shape == (2,) and result["train_loss_adv"][1] < result["train_loss_adv"][0]
    summary = summarize(result)
    assert summary["clean_to_adv"]["mean"] == pytest.approx(float(np.mean(result["clean_to_adv"])), rel=1e-6)
    assert 0.0 <= summary["adv_to_clean"]["fraction_up"] <= 1.0


def test_bad_settings_are_refused(ssd):
    with pytest.raises(ValueError, match="sgd"):
        make_optimizer("rmsprop", 1e-3)
    images, targets = _batch(2, seed=7)
    with pytest.raises(ValueError, match="conflict_steps"):
        train_copy(ssd, images, targets, steps=0)
