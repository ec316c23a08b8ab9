"""Restarts, the APGD schedule and the best iterate per image (``attacks/strong.py``)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks import objectives, strong
from robustdet_tf.attacks import pgd as pgd_lib
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles


@pytest.fixture(scope="module")
def model_and_batch():
    keras.utils.set_random_seed(0)  # the weights, whichever tests ran before in this worker
    model = SSD(**TINY_SSD)
    model.build()
    images, targets = rectangles(4, 64, seed=5)
    return model, tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


def per_image(model, method, images, targets):
    return objectives.make_per_image_objective(method)(model, images, targets).numpy()


def test_apgd_checkpoints_are_the_authors_schedule():
    assert strong.apgd_checkpoints(100).tolist() == [22, 41, 57, 70, 80, 87, 93, 99]
    assert strong.apgd_checkpoints(50).tolist() == [11, 21, 30, 38, 45]
    assert strong.apgd_checkpoints(1).tolist() == []


@pytest.mark.parametrize("settings", [
    dict(restarts=3, random_start=True, step_size=2.0, seed=1),
    dict(step_schedule="apgd"),
    dict(step_schedule="apgd", restarts=2, seed=4),
])
def test_strong_attacks_stay_in_the_ball_and_raise_every_image_objective(model_and_batch, settings):
    model, x0, targets = model_and_batch
    spec = AttackSpec("cls", epsilon=4.0, steps=4, **settings)
    adv = tf.function(lambda x: pgd_lib.pgd(model, x, targets, spec))(x0)
    assert float(tf.reduce_max(tf.abs(adv - x0))) <= 4.0 + 1e-3
    assert float(tf.reduce_min(adv)) >= 0.0 and float(tf.reduce_max(adv)) <= 255.0
    before, after = per_image(model, "cls", x0, targets), per_image(model, "cls", adv, targets)
    assert np.all(after > before), (before, after)


def test_best_iterate_is_never_worse_than_the_final_one(model_and_batch):
    """With one run and a fixed α the engine takes the reference's steps (per-image and batch gradients have the
    same sign), so keeping the best iterate can only raise each image's objective."""
    model, x0, targets = model_and_batch
    spec = AttackSpec("loc", epsilon=8.0, step_size=3.0, steps=5)
    final = pgd_lib.pgd(model, x0, targets, spec)
    best = strong.strong_pgd(model, x0, targets, spec)
    assert np.all(per_image(model, "loc", best, targets) >= per_image(model, "loc", final, targets) - 1e-5)
    one_step = spec.replace(steps=1)  # one step: the iterate after it beats the clean start, both paths agree
    np.testing.assert_allclose(strong.strong_pgd(model, x0, targets, one_step).numpy(),
                               pgd_lib.pgd(model, x0, targets, one_step).numpy(), atol=1e-4)


def test_restarts_are_seeded_and_differ_from_one_run(model_and_batch):
    model, x0, targets = model_and_batch
    spec = AttackSpec("cls", epsilon=8.0, step_size=2.0, steps=2, random_start=True, restarts=2, seed=7)
    first = strong.strong_pgd(model, x0, targets, spec).numpy()
    np.testing.assert_array_equal(first, strong.strong_pgd(model, x0, targets, spec).numpy())
    single = strong.strong_pgd(model, x0, targets, spec.replace(restarts=1)).numpy()
    assert np.all(per_image(model, "cls", tf.constant(first), targets)
                  >= per_image(model, "cls", tf.constant(single), targets) - 1e-5)


def test_settings_that_do_not_combine_are_refused():
    with pytest.raises(ValueError, match="restarts and the apgd schedule apply to cls"):
        AttackSpec("mtd", restarts=2)
    with pytest.raises(ValueError, match=r"step_schedule 'adam' is not one of \('constant', 'apgd'\)"):
        AttackSpec("cls", step_schedule="adam")
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        AttackSpec("cls", restarts=0)
    assert not AttackSpec("cls").per_image and AttackSpec("cls", restarts=2).per_image
