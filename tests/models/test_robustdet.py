"""RobustDet: parameter counts, the K-fold expansion of an SSD, CFR outputs, the loss composition."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.losses.total import total_loss
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import assert_keras_round_trip

TINY_RD = dict(aid_width=8, decoder_width=16)


def trainable_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("cfr, expected", [(False, 116_318_972), (True, 130_463_551)])
def test_full_size_parameter_counts(cfr, expected):
    model = RobustDet(cfr=cfr)
    model.build()
    assert trainable_count(model) == expected
    assert len(model.detector.all_convs()) == 35


@pytest.mark.parametrize("cfr", [False, True])
def test_from_ssd_equals_the_ssd_for_any_pi(cfr):
    ssd = SSD(**TINY_SSD)
    ssd.build()
    model = RobustDet.from_ssd(ssd, cfr=cfr, **TINY_RD)
    x = tf.random.uniform([3, 64, 64, 3], 0, 255, seed=4)
    ref = ssd(x)
    pis = [None, tf.constant([[1.0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], [0, 0, 0, 1.0]])]
    for pi in pis:
        out = model(x, pi=pi, training=False)
        for key in ("loc", "logits"):
            np.testing.assert_allclose(out[key].numpy(), ref[key].numpy(), rtol=1e-4, atol=1e-4)
    # A model that was not expanded differs.
    other = RobustDet(**TINY_SSD, **TINY_RD)
    assert np.abs(other(x)["logits"].numpy() - ref["logits"].numpy()).max() > 1e-3


def test_outputs_pi_and_cfr_terms():
    model = RobustDet(**TINY_SSD, cfr=True, **TINY_RD)
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=5)
    test_out = model(x, training=False)
    assert set(test_out) == {"loc", "logits", "pi", "mu", "logvar"}
    np.testing.assert_allclose(test_out["pi"].numpy().sum(-1), 1.0, rtol=1e-5)
    # test mode uses μ: deterministic
    np.testing.assert_allclose(model(x, training=False)["logits"].numpy(), test_out["logits"].numpy(), rtol=1e-5)
    train_out = model(x, training=True)
    assert "reconstruction" in train_out
    assert tuple(train_out["reconstruction"].shape) == (2, 60, 60, 3)  # the layer-21 decoder on an 8x8 conv4_3
    assert float(tf.reduce_max(tf.abs(train_out["reconstruction"]))) < 160.0


def test_explicit_pi_skips_the_aid():
    model = RobustDet(**TINY_SSD, **TINY_RD)
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=6)
    pi = tf.constant([[0.0, 1.0, 0.0, 0.0]] * 2)
    out = model(x, pi=pi)
    np.testing.assert_array_equal(out["pi"].numpy(), pi.numpy())
    assert np.abs(out["logits"].numpy() - model(x)["logits"].numpy()).max() > 0


def test_total_loss_weighting():
    ref = total_loss(1.0, 2.0, 0.5, 255.0, 51.0)
    assert float(ref) == pytest.approx(0.75 * (1 + 2 + 1.5) + 0.16 + 1.0)
    paper = total_loss(1.0, 2.0, 0.5, 255.0, 51.0, weighting="paper")
    assert float(paper) == pytest.approx(0.75 * 4.5 + 0.16 * 255 + 5 * 51)
    with pytest.raises(ValueError):
        total_loss(1.0, 2.0, 0.5, weighting="eq5")


def test_keras_round_trip(tmp_path):
    model = RobustDet(**TINY_SSD, cfr=True, adversarial={"method": "cls", "steps": 5}, **TINY_RD)
    model.build()
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=7)
    loaded = assert_keras_round_trip(model, x, tmp_path, rtol=1e-5, atol=1e-5, call_kwargs={"training": False})
    assert loaded.adversary.attack == AttackSpec("cls", steps=5) and loaded.cfr


def test_nan_guard_fused_into_relu_equals_the_per_module_guard():
    """docs/reference.md#forward-pass-and-nan-guard: NaN → 0 after VGG modules 0..22. The fast path guards inside the
    ReLUs only; the per-module path (taken when intermediate features are requested) is the reference as written.
    Both must agree, in value and gradient, when a convolution emits NaN."""
    keras.utils.set_random_seed(0)  # the weights and images (an unseeded draw once exceeded the tolerances)
    model = RobustDet(**TINY_SSD, **TINY_RD)
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=7)
    pi = tf.constant([[0.25] * 4] * 2)
    model(x, pi=pi)
    bias = model.detector.vgg_convs["vgg_5"].bias  # conv2_1: its output channel 0 becomes NaN everywhere
    bias.assign(tf.tensor_scatter_nd_update(bias, [[0, 0]], [np.nan]))

    def outputs_and_input_gradient(return_features):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = model.detector(model.preprocess(x), pi=pi, return_features=return_features)
            loss = tf.reduce_sum(out["logits"]) + tf.reduce_sum(out["loc"])
        return out, tape.gradient(loss, x)

    fused, fused_grad = outputs_and_input_gradient(False)
    per_module, per_module_grad = outputs_and_input_gradient(True)
    assert np.isnan(per_module["features"]["vgg_5"].numpy()).sum() == 0  # guarded right after the conv
    for key in ("loc", "logits"):
        assert np.isfinite(fused[key].numpy()).all()
        np.testing.assert_allclose(fused[key].numpy(), per_module[key].numpy(), rtol=1e-6, atol=1e-6)
    assert np.isfinite(fused_grad.numpy()).all()
    np.testing.assert_allclose(fused_grad.numpy(), per_module_grad.numpy(), rtol=1e-5, atol=1e-6)
    # Without the guard the NaN reaches the outputs: the test really exercises it.
    model.detector.nan_guard = False
    assert np.isnan(model.detector(model.preprocess(x), pi=pi)["logits"].numpy()).any()
