"""Gradient entanglement: R on hand-built gradients and hand-made losses with known answers, and on the detectors
(identical images give R = 1 in every layer and every AAconv kernel; each pair's R is that pair's own gradients)."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.analysis.entanglement import conv_kernels, gradient_entanglement, summarize
from robustdet_tf.analysis.per_image import detection_loss_fn, gradient_ratio, pair_gradient_stats
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles


def test_ratio_of_identical_orthogonal_opposite_and_scaled_gradients():
    g = np.array([[1.0, 2.0, -3.0, 0.5]] * 4, np.float32)
    other = np.array([[2.0, -1.0, 0.0, 0.0], [-1.0, -2.0, 3.0, -0.5], [3.0, 6.0, -9.0, 1.5], [0.0, 0.0, 0.0, 0.0]],
                     np.float32)
    r = gradient_ratio(other, g).numpy()  # R = g_clean·g_adv / ‖g_adv‖² with g_adv = g
    np.testing.assert_allclose(r, [0.0, -1.0, 3.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(gradient_ratio(g, g).numpy(), 1.0, rtol=1e-6)
    assert np.isnan(gradient_ratio(g[:1], np.zeros((1, 4), np.float32)).numpy()[0])  # undefined, not 0


def test_pair_statistics_of_a_hand_made_linear_loss():
    """loss(x) = <W, x>: the gradient wrt W is the image itself, so R is known from the images: the same image
    → 1, images on disjoint pixels → 0, clean = 3·adv → 3; each pair in one batch gets its own value."""
    size = 6
    w = tf.Variable(tf.random.normal([size, size, 3], seed=1))
    loss_fn = lambda x, t: tf.reduce_sum(x * w[None], [1, 2, 3])  # noqa: E731
    base = np.random.default_rng(0).uniform(0, 1, (size, size, 3)).astype(np.float32)
    top, bottom = base.copy(), base.copy()
    top[size // 2:], bottom[: size // 2] = 0, 0
    clean = np.stack([base, top, 3 * base])
    adv = np.stack([base, bottom, base])
    targets = {"boxes": np.zeros((3, 1, 4), np.float32), "labels": -np.ones((3, 1), np.int32)}
    (stats,) = tf.function(lambda c, a: pair_gradient_stats(loss_fn, [w], [False], c, a, targets))(clean, adv)
    r = stats[:, 0, 0] / stats[:, 1, 0]
    np.testing.assert_allclose(r.numpy(), [1.0, 0.0, 3.0], atol=1e-5)
    np.testing.assert_allclose(stats[:, 2, 0].numpy(), np.sum(clean**2, (1, 2, 3)), rtol=1e-5)  # ‖g_clean‖²


def test_per_kernel_statistics_slice_the_leading_axis():
    """Two 'kernels' V[0], V[1] with loss <V0, x> + <V1, x·m> (m = top half): for clean = top half lit and adv = all
    lit, kernel 0 gives R = |top| / |all| = 0.5, kernel 1 gives R = 1 and the whole weight (|top| + |top|) /
    (|all| + |top|) = 2/3."""
    size = 4
    v = tf.Variable(tf.zeros([2, size, size, 1]))
    mask = np.zeros((size, size, 1), np.float32)
    mask[: size // 2] = 1
    loss_fn = lambda x, t: tf.reduce_sum(x * v[0][None], [1, 2, 3]) + tf.reduce_sum(x * mask * v[1][None], [1, 2, 3])  # noqa: E731
    clean, adv = mask[None], np.ones((1, size, size, 1), np.float32)
    targets = {"boxes": np.zeros((1, 1, 4), np.float32), "labels": -np.ones((1, 1), np.int32)}
    (sliced,) = tf.function(lambda c, a: pair_gradient_stats(loss_fn, [v], [True], c, a, targets))(clean, adv)
    (whole,) = tf.function(lambda c, a: pair_gradient_stats(loss_fn, [v], [False], c, a, targets))(clean, adv)
    np.testing.assert_allclose((sliced[0, 0] / sliced[0, 1]).numpy(), [0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose((whole[0, 0, 0] / whole[0, 1, 0]).numpy(), 2 / 3, rtol=1e-6)


@pytest.fixture(scope="module")
def models_and_data():
    tf.keras.utils.set_random_seed(0)
    ssd = SSD(**TINY_SSD)
    robustdet = RobustDet(**TINY_SSD, aid_width=8, decoder_width=16)
    images, targets = rectangles(3, 64, seed=2)
    return ssd, robustdet, tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}


@pytest.mark.slow
def test_identical_images_give_R_one_in_every_layer_and_kernel(models_and_data):
    ssd, robustdet, images, targets = models_and_data
    for model in (ssd, robustdet):
        result = gradient_entanglement(model, [(images, images, targets)])
        assert result["layers"] == list(model.detector.all_convs())
        assert result["ratio"].shape == (3, len(result["layers"]))
        defined = result["adv_norm"] > 0  # a loc head whose priors match no object has a zero gradient
        assert defined.mean() > 0.5 and np.all(np.isnan(result["ratio"][~defined]))
        np.testing.assert_allclose(result["ratio"][defined], 1.0, rtol=1e-4)
        np.testing.assert_allclose(result["cosine"][defined], 1.0, rtol=1e-4)
        np.testing.assert_allclose(result["overall"], 1.0, rtol=1e-4)
    assert set(result["kernel_ratio"]) == set(result["layers"])  # RobustDet: every conv is an AAconv
    per_kernel = np.stack(list(result["kernel_ratio"].values()), 1)
    assert per_kernel.shape == (3, len(result["layers"]), robustdet.num_kernels)
    finite = np.isfinite(per_kernel)  # NaN where the layer's gradient is zero, or kernel k's π underflowed to 0
    assert finite.mean() > 0.5
    np.testing.assert_allclose(per_kernel[finite], 1.0, rtol=1e-4)


@pytest.mark.slow
def test_each_pair_gets_the_ratio_of_its_own_gradients(models_and_data):
    """R of pair i in a batch equals the ratio of the two single-image gradients computed separately.  (Both in
    tf.function: an eager grouped-convolution filter gradient crashes the oneDNN CPU kernels of TF 2.21.)"""
    _, robustdet, images, targets = models_and_data
    adv = tf.function(lambda x: pgd(robustdet, x, targets, AttackSpec(steps=1)))(images)
    result = gradient_entanglement(robustdet, [(images, adv, targets)])
    kernels = conv_kernels(robustdet)
    name = "conf_0"
    loss_fn = detection_loss_fn(robustdet)

    @tf.function
    def single_gradient(x, t):
        with tf.GradientTape() as tape:
            loss = loss_fn(x, t)
        return tape.gradient(loss, kernels[name])  # [K, kh, kw, Cin, Cout]

    def grad(x, i):
        return single_gradient(x[i : i + 1], {k: v[i : i + 1] for k, v in targets.items()}).numpy()

    column = result["layers"].index(name)
    for i in range(3):
        g_clean, g_adv = grad(images, i), grad(adv, i)
        with np.errstate(invalid="ignore"):  # 0/0 where a gradient is zero (π_k underflowed): NaN on both sides
            want = np.sum(g_clean * g_adv) / np.sum(g_adv * g_adv)
            per_kernel = np.sum((g_clean * g_adv).reshape(4, -1), 1) / np.sum((g_adv * g_adv).reshape(4, -1), 1)
        np.testing.assert_allclose(result["ratio"][i, column], want, rtol=2e-3)
        np.testing.assert_allclose(result["kernel_ratio"][name][i], per_kernel, rtol=2e-3)
    assert not np.allclose(result["ratio"], 1.0)  # the attack changed the gradients
    summary = summarize(result)
    assert summary["num_pairs"] == 3 and len(summary["ratio"]["median"]) == len(result["layers"])
    assert summary["overall"]["median"] == pytest.approx(float(np.median(result["overall"])), rel=1e-6)


def test_a_model_without_detector_convolutions_is_refused():
    with pytest.raises(ValueError, match="all_convs"):
        conv_kernels(tf.keras.Sequential([tf.keras.layers.Dense(2)]))
