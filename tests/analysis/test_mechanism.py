"""The mechanism diagnostics: the AID's separation AUC and its bootstrap, the kernels' spread, π's shift."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.analysis import mechanism
from robustdet_tf.analysis.findings import findings
from robustdet_tf.analysis.run import DEFAULT_SETTINGS
from robustdet_tf.layers.aaconv import AAConv2D
from robustdet_tf.metrics.bootstrap import BootstrapSpec, resample_weights
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD


def _mixtures(n, k, shift, seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.dirichlet(np.full(k, 5.0), size=n)
    adv = rng.dirichlet(np.full(k, 5.0), size=n)
    adv[:, 0] += shift  # attacked images lean to kernel 0
    return clean, adv / adv.sum(axis=1, keepdims=True)


def _auc_by_pairs(pos, neg):
    """The AUC by its definition: every (attacked, clean) pair, ties one half."""
    return np.mean([[1.0 if p > q else 0.5 if p == q else 0.0 for q in neg] for p in pos])


def test_js_divergence_is_zero_for_equal_mixtures_symmetric_and_at_most_ln2():
    p = np.array([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    q = np.array([[0.1, 0.2, 0.7], [0.0, 1.0, 0.0]])
    assert np.allclose(mechanism.js_divergence(p, p), 0.0, atol=1e-9)
    assert np.allclose(mechanism.js_divergence(p, q), mechanism.js_divergence(q, p))
    assert mechanism.js_divergence(p, q)[1] == pytest.approx(np.log(2), abs=1e-9)  # disjoint supports: the maximum


def test_auc_counts_pairs_and_ties_by_definition():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 5, 13).astype(float), rng.integers(0, 5, 9).astype(float)  # many ties
    assert mechanism.auc(pos, neg) == pytest.approx(_auc_by_pairs(pos, neg), abs=1e-12)
    assert mechanism.auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert mechanism.auc(np.array([0.0]), np.array([1.0])) == 0.0


def test_separation_is_half_without_difference_and_near_one_for_a_clear_shift():
    clean, adv = _mixtures(60, 4, shift=0.0)
    assert mechanism.separation(clean, clean)[0] == pytest.approx(0.5)  # the same mixtures: every pair ties or swaps
    assert 0.3 < mechanism.separation(clean, adv)[0] < 0.7  # another draw of the same distribution
    clean, adv = _mixtures(60, 4, shift=3.0)
    assert mechanism.separation(clean, adv)[0] > 0.95
    # the score is the JS divergence of each mixture from the clean images' mean
    mean = clean.mean(axis=0)
    expected = _auc_by_pairs(mechanism.js_divergence(adv, mean), mechanism.js_divergence(clean, mean))
    assert mechanism.separation(clean, adv)[0] == pytest.approx(expected, abs=1e-12)


def test_every_resample_equals_the_auc_recomputed_on_the_resampled_images():
    clean, adv = _mixtures(25, 3, shift=0.4, seed=2)
    weights = resample_weights(25, 40, seed=3)
    resampled = mechanism.separation(clean, adv, weights)
    for row, value in zip(weights, resampled):
        images = np.repeat(np.arange(25), row.astype(int))  # each image as often as it was drawn, clean and attacked
        assert value == pytest.approx(mechanism.separation(clean[images], adv[images])[0], abs=1e-12)
    assert len(set(np.round(resampled, 6))) > 5  # the resamples differ


def test_kernel_spread_is_zero_for_identical_kernels_and_measures_a_moved_kernel():
    keras.utils.set_random_seed(0)
    ssd = SSD(**TINY_SSD)
    model = RobustDet.from_ssd(ssd, num_kernels=4, aid_width=4)
    spread = mechanism.kernel_spread(model)
    layers = [layer for layer in model._flatten_layers() if isinstance(layer, AAConv2D)]
    assert len(spread["layers"]) == len(layers) == len(ssd.detector.all_convs())
    assert spread["mean"] == pytest.approx(0.0, abs=1e-7)
    layer = layers[0]
    kernel = layer.kernel.numpy()
    kernel[0] += 2.0 * kernel[0]  # W_0 = 3 W, others W: mean 1.5 W; deviations 1.5, 0.5, 0.5, 0.5 × ‖W‖
    layer.kernel.assign(kernel)
    value = mechanism.kernel_spread(model)["layers"][layer.path]
    assert value == pytest.approx((1.5 + 3 * 0.5) / 4 / 1.5, rel=1e-5)
    assert mechanism.kernel_spread(ssd) == {"layers": {}, "mean": None}


def test_mechanism_of_a_robustdet_and_of_an_ssd():
    keras.utils.set_random_seed(0)
    model = RobustDet(**TINY_SSD, num_kernels=4, aid_width=8, seed=0)
    rng = np.random.default_rng(0)
    clean = tf.constant(rng.uniform(0, 255, (6, 64, 64, 3)), tf.float32)
    attacked = tf.clip_by_value(clean + tf.constant(rng.choice([-40.0, 40.0], (6, 64, 64, 3)), tf.float32), 0, 255)
    pairs = [(clean[:4], attacked[:4]), (clean[4:], attacked[4:])]  # a full batch and a smaller last one
    out = mechanism.mechanism(model, pairs, BootstrapSpec(resamples=200, seed=0))
    pi_clean = model.mixture(clean).numpy()
    pi_adv = model.mixture(attacked).numpy()
    assert out["num_images"] == 6 and out["has_aid"]
    assert out["aid_auc"] == pytest.approx(mechanism.separation(pi_clean, pi_adv)[0], abs=1e-6)
    assert out["pi_shift"] == pytest.approx(float(mechanism.js_divergence(pi_clean, pi_adv).mean()), rel=1e-4)
    assert out["aid_auc_ci_low"] <= out["aid_auc"] <= out["aid_auc_ci_high"]
    assert out["pi_shift_ci_low"] <= out["pi_shift"] <= out["pi_shift_ci_high"]
    assert out["pi_shift"] > 0 and out["kernel_spread"] > 0  # random kernels and a random AID
    assert np.allclose(np.sum(out["pi_clean_mean"]), 1.0, atol=1e-5)
    assert mechanism.mechanism(SSD(**TINY_SSD), [], BootstrapSpec()) == {"has_aid": False}
    assert "aid_auc_ci_low" not in mechanism.mechanism(model, pairs, BootstrapSpec(resamples=0))


def test_findings_state_the_score_the_images_and_the_intervals():
    summary = {"has_aid": True, "num_images": 80, "aid_auc": 0.93, "aid_auc_ci_low": 0.88, "aid_auc_ci_high": 0.97,
               "pi_shift": 0.0123, "kernel_spread": 0.045}
    lines = findings({"mechanism": {"ssd": {"has_aid": False}, "robustdet": summary}}, DEFAULT_SETTINGS)
    assert lines[0] == ("AID separation of A_cls from clean images (ROC AUC of JS(π ‖ mean clean π), 80 images, "
                        "0.5 = none): robustdet 0.93 [0.88, 0.97]")
    moved = {**summary, "transfer": {"source": "ssd", "aid_auc": 0.61, "aid_auc_ci_low": 0.52,
                                     "aid_auc_ci_high": 0.7, "pi_shift": 0.001}}
    line = findings({"mechanism": {"robustdet": moved}}, DEFAULT_SETTINGS)[0]
    assert line.endswith("robustdet 0.93 [0.88, 0.97] (made on ssd: 0.61 [0.52, 0.70])")
    assert "robustdet 0.045 / 0.0123" in lines[1] and "ssd" not in lines[1]
    assert findings({"mechanism": {"ssd": {"has_aid": False}}}, DEFAULT_SETTINGS) == []
