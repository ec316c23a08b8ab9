"""Adversarial training in ``fit``: the interleaved schedule's state, and a full 20-step cycle for RobustDet and
every baseline (SSD-AT(cls), SSD-AT(loc), MTD, CWAT) on the synthetic set."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.data import pipeline
from robustdet_tf.data.shapes import shapes_dataset
from robustdet_tf.models.adversarial import AdversarialSchedule
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from robustdet_tf.models.training import sgd
from tests.conftest import TINY_SSD
from tests.helpers import rectangles

SHAPES_SSD = {**TINY_SSD, "num_classes": 7}


def streams(batch_size=2):
    source = shapes_dataset(24, image_size=64, seed=0)
    return pipeline.two_streams(source, seed=0, image_size=64, batch_size=batch_size, max_boxes=6,
                                augment_examples=False, shuffle_buffer=8)


def test_interleaved_schedule_holds_and_renews_the_batch():
    model = SSD(**TINY_SSD)
    model.build()
    schedule = AdversarialSchedule(AttackSpec("cls", steps=3))
    batches = [rectangles(2, 64, seed=s) for s in range(5)]
    batches = [(np.clip(x, 20, 235), t) for x, t in batches]
    cleans, advs = [], []
    for images, targets in batches:
        adv, clean, _ = schedule.next_batch(model, tf.constant(images), targets)
        cleans.append(clean.numpy())
        advs.append(adv.numpy())
    # steps 0-2 attack batch 0, steps 3-4 batch 3
    for k in (1, 2):
        np.testing.assert_array_equal(cleans[k], batches[0][0])
    np.testing.assert_array_equal(cleans[3], batches[3][0])
    np.testing.assert_array_equal(cleans[4], batches[3][0])
    # each step advances the held batch by one step: with ε = α = 8 the perturbation stays ternary and grows
    assert np.abs(advs[0] - cleans[0]).max() == pytest.approx(8.0)
    assert not np.allclose(advs[1], advs[0])
    assert int(schedule.counter.numpy()) == 5
    np.testing.assert_array_equal(schedule.clean.numpy(), batches[3][0])


def run_cycle(model):
    model.compile(optimizer=sgd(1e-3))
    history = model.fit(streams(), steps_per_epoch=10, epochs=2, verbose=0).history
    assert int(model.adversary.counter.numpy()) == 20
    held = model.adversary.current.numpy() - model.adversary.clean.numpy()
    assert 0 < np.abs(held).max() <= 8.0 + 1e-4
    return history


def test_robustdet_trains_a_full_cycle_and_lowers_its_loss():
    keras.utils.set_random_seed(0)
    model = RobustDet(**SHAPES_SSD, aid_width=4, decoder_width=16, cfr=True, adversarial={"method": "mtd"}, seed=0)
    history = run_cycle(model)
    assert history["loss"][1] < history["loss"][0], history
    assert history["triplets"][-1] == 2.0  # 2 + 2 images: one pair per label
    assert all(np.isfinite(v).all() for v in history.values())


@pytest.mark.parametrize("method", ["cls", "loc", "mtd", "cwa"])
def test_baselines_train_a_full_cycle_and_lower_their_loss(method):
    keras.utils.set_random_seed(0)  # 20 steps from random init: fix the init so the comparison is not a coin flip
    model = SSD(**SHAPES_SSD, adversarial={"method": method})
    history = run_cycle(model)
    assert history["loss"][1] < history["loss"][0], (method, history)
