"""Tests of the photometric step: OpenCV-float HSV maths, determinism per seed, the reference's
chain vs the corrected clipping."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from robustdet_tf.data import photometric
from tests.data.seeds import seed as _seed

# ------------------------------------------------------------------------------------------------ colour space


def _opencv_rgb_to_hsv(rgb):
    """OpenCV's float RGB2HSV, transcribed scalar by scalar."""
    out = np.empty_like(rgb)
    eps = np.float32(1.1920929e-07)
    for idx in np.ndindex(rgb.shape[:-1]):
        r, g, b = rgb[idx]
        v = max(r, g, b)
        vmin = min(r, g, b)
        diff = v - vmin
        s = diff / (abs(v) + eps)
        diff = 60.0 / (diff + eps)
        if v == r:
            h = (g - b) * diff
        elif v == g:
            h = (b - r) * diff + 120.0
        else:
            h = (r - g) * diff + 240.0
        if h < 0:
            h += 360.0
        out[idx] = (h, s, v)
    return out


def _opencv_hsv_to_rgb(hsv):
    """OpenCV's float HSV2RGB with its sector table, transcribed scalar by scalar."""
    sector_data = ((1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0))
    out = np.empty_like(hsv)
    for idx in np.ndindex(hsv.shape[:-1]):
        h, s, v = hsv[idx]
        if s == 0:
            out[idx] = (v, v, v)
            continue
        h = h * 6.0 / 360.0
        while h < 0:
            h += 6
        while h >= 6:
            h -= 6
        sector = int(np.floor(h))
        h -= sector
        tab = (v, v * (1 - s), v * (1 - s * h), v * (1 - s * (1 - h)))
        b, g, r = (tab[i] for i in sector_data[sector])
        out[idx] = (r, g, b)
    return out


def test_hsv_matches_tf_image_in_range_and_round_trips():
    rgb = tf.random.stateless_uniform([7, 9, 3], _seed(1), maxval=255.0)
    hsv = photometric.rgb_to_hsv_degrees(rgb)
    reference = tf.image.rgb_to_hsv(rgb / 255.0)
    np.testing.assert_allclose(hsv[..., 0] / 360.0, reference[..., 0], atol=1e-5)
    np.testing.assert_allclose(hsv[..., 1], reference[..., 1], atol=1e-5)
    np.testing.assert_allclose(hsv[..., 2] / 255.0, reference[..., 2], atol=1e-6)
    np.testing.assert_allclose(photometric.hsv_degrees_to_rgb(hsv), rgb, atol=1e-3)


def test_hsv_follows_opencv_float_semantics_out_of_range():
    """The reference chain feeds values outside [0, 255] (negative after brightness, S > 1 after saturation)."""
    rng = np.random.default_rng(0)
    # Half of the pixels are dark enough for all channels to be negative after a brightness shift.
    rgb = np.concatenate([rng.uniform(-60.0, 320.0, (3, 8, 3)), rng.uniform(-40.0, 5.0, (3, 8, 3))]).astype(np.float32)
    np.testing.assert_allclose(photometric.rgb_to_hsv_degrees(rgb), _opencv_rgb_to_hsv(rgb), rtol=1e-4, atol=1e-3)
    hsv = np.stack(
        [rng.uniform(0, 360, (6, 8)), rng.uniform(0, 1.6, (6, 8)), rng.uniform(-40, 300, (6, 8))], axis=-1
    ).astype(np.float32)
    np.testing.assert_allclose(photometric.hsv_degrees_to_rgb(hsv), _opencv_hsv_to_rgb(hsv), rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------ photometric


def test_photometric_is_deterministic_and_seed_dependent():
    image = tf.random.stateless_uniform([12, 10, 3], _seed(2), maxval=255.0)
    a = photometric.photometric_distort(image, _seed(5, 1))
    b = photometric.photometric_distort(image, _seed(5, 1))
    np.testing.assert_array_equal(a, b)
    changed = [
        float(tf.reduce_max(tf.abs(photometric.photometric_distort(image, _seed(5, k)) - a))) > 1.0 for k in range(2, 8)
    ]
    assert any(changed)


def test_the_reference_photometric_leaves_range_and_corrected_clips():
    image = tf.random.stateless_uniform([16, 16, 3], _seed(3), maxval=255.0)
    reference_out_of_range = 0
    for k in range(40):
        reference = photometric.photometric_distort(image, _seed(9, k), chain="reference")
        corrected = photometric.photometric_distort(image, _seed(9, k), chain="corrected")
        assert float(tf.reduce_min(corrected)) >= 0.0 and float(tf.reduce_max(corrected)) <= 255.0
        if float(tf.reduce_min(reference)) < 0.0 or float(tf.reduce_max(reference)) > 255.0:
            reference_out_of_range += 1
    assert reference_out_of_range >= 10  # brightness/contrast/saturation fire half of the time each


def test_photometric_draws_every_step():
    """Over many seeds the identity, brightness shifts, contrast scalings and channel swaps all occur."""
    flat = tf.fill([4, 4, 3], 100.0) + tf.constant([0.0, 30.0, 60.0])  # R, G, B distinct, in range
    outputs = np.stack([photometric.photometric_distort(flat, _seed(4, k))[0, 0].numpy() for k in range(64)])
    identical = np.all(np.abs(outputs - [100.0, 130.0, 160.0]) < 1e-2, axis=1)
    assert 0 < identical.sum() < 16  # all of brightness, contrast, sat, hue, permutation skipped: ~1/32
    channel_order_changed = np.argsort(outputs, axis=1)
    assert len({tuple(row) for row in channel_order_changed}) >= 4  # permutations and hue shifts reorder channels
