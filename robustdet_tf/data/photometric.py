"""The reference's ``PhotometricDistort`` (docs/reference.md#augmentation) and the OpenCV-float HSV
conversion it relies on.

The first step of the SSD augmentation chain (``augment.ssd_augment``).  Brightness, contrast, saturation and hue
act identically on RGB or BGR, and the channel-permutation noise draws uniformly from all six permutations, so the
reference's BGR distribution is reproduced on RGB images.  HSV follows OpenCV's float conversion (H in degrees
[0, 360), S = range / (|V| + eps), V in pixel units); ``tf.image.rgb_to_hsv`` agrees with it (with H / 360) for
values in [0, 255] but not for the negative values the reference chain can produce (it never clips).
"""

from __future__ import annotations

import tensorflow as tf

from robustdet_tf.behaviour import REFERENCE, checked
from robustdet_tf.data.random_draws import as_seed, coin, key, uniform

_CHANNEL_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
_FLT_EPSILON = 1.1920929e-07  # OpenCV's FLT_EPSILON in its float RGB->HSV conversion


def rgb_to_hsv_degrees(image: tf.Tensor) -> tf.Tensor:
    """RGB -> HSV with OpenCV's float semantics: H in degrees [0, 360), S = range / (|V| + eps), V = max."""
    r, g, b = tf.unstack(image, axis=-1)
    value = tf.maximum(tf.maximum(r, g), b)
    spread = value - tf.minimum(tf.minimum(r, g), b)
    saturation = spread / (tf.abs(value) + _FLT_EPSILON)
    scale = 60.0 / (spread + _FLT_EPSILON)
    hue = tf.where(
        tf.equal(value, r),
        (g - b) * scale,
        tf.where(tf.equal(value, g), (b - r) * scale + 120.0, (r - g) * scale + 240.0),
    )
    hue = tf.where(hue < 0.0, hue + 360.0, hue)
    return tf.stack([hue, saturation, value], axis=-1)


def hsv_degrees_to_rgb(hsv: tf.Tensor) -> tf.Tensor:
    """OpenCV's float HSV -> RGB (its sector table written in clamp form, equal for any S and V); the inverse of
    ``rgb_to_hsv_degrees`` for non-negative values."""
    hue, saturation, value = tf.unstack(hsv, axis=-1)
    sector = tf.math.floormod(hue / 60.0, 6.0)

    def channel(weight):
        return value * (1.0 - saturation + saturation * tf.clip_by_value(weight, 0.0, 1.0))

    red = channel(tf.abs(sector - 3.0) - 1.0)
    green = channel(2.0 - tf.abs(sector - 2.0))
    blue = channel(2.0 - tf.abs(sector - 4.0))
    return tf.stack([red, green, blue], axis=-1)


def photometric_distort(image: tf.Tensor, seed, *, chain: str = REFERENCE) -> tf.Tensor:
    """Reference ``PhotometricDistort``: brightness, then contrast before or after (saturation, hue), then a
    random channel permutation.  Each step fires with probability 0.5.  ``image`` is float32 [H, W, 3]; ``chain`` is
    ``"reference"`` (never clips) or ``"corrected"`` (clips after every step)."""
    reference = checked("chain", chain) == REFERENCE
    seed = as_seed(seed)
    image = tf.cast(image, tf.float32)

    def clip(x):
        return x if reference else tf.clip_by_value(x, 0.0, 255.0)

    delta = uniform(seed, 1, low=-32.0, high=32.0)
    image = clip(image + tf.where(coin(seed, 0), delta, 0.0))

    alpha = tf.where(coin(seed, 3), uniform(seed, 4, low=0.5, high=1.5), 1.0)
    contrast_first = coin(seed, 2)
    image = clip(image * tf.where(contrast_first, alpha, 1.0))

    hsv = rgb_to_hsv_degrees(image)
    hue, saturation, value = tf.unstack(hsv, axis=-1)
    saturation *= tf.where(coin(seed, 5), uniform(seed, 6, low=0.5, high=1.5), 1.0)
    if not reference:
        saturation = tf.clip_by_value(saturation, 0.0, 1.0)
    hue += tf.where(coin(seed, 7), uniform(seed, 8, low=-18.0, high=18.0), 0.0)
    hue = tf.where(hue > 360.0, hue - 360.0, hue)
    hue = tf.where(hue < 0.0, hue + 360.0, hue)
    image = clip(hsv_degrees_to_rgb(tf.stack([hue, saturation, value], axis=-1)))

    image = clip(image * tf.where(contrast_first, 1.0, alpha))

    which = tf.random.stateless_uniform([], key(seed, 10), minval=0, maxval=6, dtype=tf.int32)
    permutation = tf.gather(tf.constant(_CHANNEL_PERMUTATIONS, tf.int32), which)
    permutation = tf.where(coin(seed, 9), permutation, tf.range(3))
    return tf.gather(image, permutation, axis=-1)
