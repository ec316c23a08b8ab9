"""Attacks that adapt to the AID (``attacks/adaptive.py``): their objectives, their budget and what they do to π."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks import adaptive, objectives, strong
from robustdet_tf.attacks import pgd as pgd_lib
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles

BUDGET = dict(epsilon=6.0, step_size=2.0, steps=4)


@pytest.fixture(scope="module")
def batch():
    images, targets = rectangles(4, 64, seed=3)
    return tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


@pytest.fixture(scope="module")
def robustdet():
    keras.utils.set_random_seed(0)  # the initial weights, whichever tests ran before (the quick loop skips some)
    model = RobustDet(**TINY_SSD, num_kernels=4, aid_width=8, seed=0)
    model.build()
    return model


def attack(model, images, targets, spec):
    return tf.function(lambda x: pgd_lib.pgd(model, x, targets, spec))(images)


def divergence(model, clean, adv):
    return adaptive.mixture_divergence(model.mixture(clean), model.mixture(adv)).numpy()


def test_mixture_divergence_known_values():
    p, q = tf.constant([[0.5, 0.5]]), tf.constant([[0.9, 0.1]])
    np.testing.assert_allclose(adaptive.mixture_divergence(p, q).numpy(), [0.5 * np.log(0.5 / 0.9) +
                                                                          0.5 * np.log(0.5 / 0.1)], rtol=1e-5)
    assert float(adaptive.mixture_divergence(q, q)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(adaptive.mixture_divergence(q, q, "js")[0]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="unknown mixture divergence 'l2'"):
        adaptive.mixture_divergence(p, q, "l2")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adaptive", "fixed_pi", "aid"])
@pytest.mark.parametrize("schedule", ["constant", "apgd"])
def test_adaptive_attacks_respect_epsilon_and_raise_their_objective(robustdet, batch, method, schedule):
    images, targets = batch
    spec = AttackSpec(method, step_schedule=schedule, **BUDGET)
    adv = attack(robustdet, images, targets, spec)
    assert float(tf.reduce_max(tf.abs(adv - images))) <= BUDGET["epsilon"] + 1e-3
    assert 0.0 <= float(tf.reduce_min(adv)) and float(tf.reduce_max(adv)) <= 255.0
    # What each keeps: the detection loss of the model with its own π (adaptive, fixed_pi), the move of π (aid).
    score = lambda x: strong.per_image_objective(spec, robustdet, images)(robustdet, x, targets)[1].numpy()  # noqa
    before, after = score(images), score(adv)
    assert np.all(after >= before - 1e-5) and after.sum() > before.sum() + 1e-3, (before, after)
    if method == "aid":
        np.testing.assert_allclose(after, divergence(robustdet, images, adv), rtol=1e-4, atol=1e-6)


def test_keeping_pi_clean_and_attacking_the_router_move_pi_as_intended(robustdet, batch):
    """A large λ keeps the mixture nearer the clean one than A_cls leaves it; the AID-only attack moves it
    further than A_cls does."""
    images, targets = batch
    a_cls = attack(robustdet, images, targets, AttackSpec("cls", **BUDGET))
    kept = attack(robustdet, images, targets, AttackSpec("adaptive", aid_weight=1000.0, **BUDGET))
    router = attack(robustdet, images, targets, AttackSpec("aid", **BUDGET))
    d_cls, d_kept, d_router = (divergence(robustdet, images, x).mean() for x in (a_cls, kept, router))
    assert d_kept < d_cls < d_router, (d_kept, d_cls, d_router)


def test_fixed_pi_scores_the_detector_with_the_clean_mixture(robustdet, batch):
    images, targets = batch
    spec = AttackSpec("fixed_pi", **BUDGET)
    fixed = adaptive.adaptive_objective(spec, robustdet, images)
    # At the clean image the fixed π is the model's own π: the objective is the plain per-image cls loss.
    np.testing.assert_allclose(fixed(robustdet, images, targets).numpy(),
                               objectives.make_per_image_objective("cls")(robustdet, images, targets).numpy(),
                               rtol=1e-5)
    moved = images + 5.0
    pi_clean = robustdet.mixture(images)
    expected = objectives.per_image_terms(robustdet, robustdet(moved, pi=pi_clean, training=False), targets)[1]
    np.testing.assert_allclose(fixed(robustdet, moved, targets).numpy(), expected.numpy(), rtol=1e-5)


def test_models_without_an_aid(batch):
    images, targets = batch
    ssd = SSD(**TINY_SSD)
    ssd.build()
    assert not adaptive.has_aid(ssd) and not adaptive.applies_to("aid", ssd) and adaptive.applies_to("adaptive", ssd)
    with pytest.raises(ValueError, match="the 'aid' attack needs a model with an AID"):
        strong.strong_pgd(ssd, images, targets, AttackSpec("aid", **BUDGET))
    # Nothing to adapt to: the adaptive attacks are the base attack of the same engine.
    base = strong.strong_pgd(ssd, images, targets, AttackSpec("cls", restarts=1, step_schedule="apgd", **BUDGET))
    for method in ("adaptive", "fixed_pi"):
        spec = AttackSpec(method, step_schedule="apgd", **BUDGET)
        np.testing.assert_allclose(strong.strong_pgd(ssd, images, targets, spec).numpy(), base.numpy(), atol=1e-4)


def test_attacks_called_eagerly_on_robustdet_run_in_a_graph(robustdet, batch):
    """The eager oneDNN filter-gradient kernel crashes on RobustDet's mixed kernels (TF 2.21); ``in_graph`` makes an
    eager call of an attack or of ``input_gradient`` run as a graph instead (in a subprocess-free way: this call
    would abort the test process without it)."""
    images, targets = batch
    grad = pgd_lib.input_gradient(objectives.make_objective("cls"), robustdet, images[:3], {k: v[:3] for k, v in
                                                                                         targets.items()})
    assert grad.shape == (3, 64, 64, 3) and np.isfinite(grad.numpy()).all()
    adv = pgd_lib.pgd(robustdet, images[:3], {k: v[:3] for k, v in targets.items()}, AttackSpec("cls", steps=1))
    assert float(tf.reduce_max(tf.abs(adv - images[:3]))) <= 8.0 + 1e-3
