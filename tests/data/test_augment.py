"""Tests of the SSD augmentation chain: determinism, boxes that move with the pixels, the reference's chain vs the
corrected one (the photometric step is tested in test_photometric.py)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.data import augment, photometric
from tests.data.seeds import seed as _seed

BACKGROUND = (40.0, 200.0, 60.0)
COLOURS = ((250.0, 20.0, 20.0), (20.0, 20.0, 250.0), (240.0, 240.0, 10.0))
RECTS_PX = ((4, 6, 30, 26), (40, 10, 72, 40), (14, 34, 34, 56))  # x0, y0, x1, y1 (exclusive ends) in 80 x 60
RECT_AREAS = tuple((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in RECTS_PX)



def _painted_scene(height=60, width=80):
    """Flat background with three non-overlapping solid rectangles on pixel boundaries; label k has colour k."""
    image = np.empty((height, width, 3), np.float32)
    image[:] = BACKGROUND
    scale = np.array([width / 80.0, height / 60.0, width / 80.0, height / 60.0])
    rects_px = np.round(np.array(RECTS_PX) * scale).astype(int)
    for (x0, y0, x1, y1), colour in zip(rects_px, COLOURS):
        image[y0:y1, x0:x1] = colour
    boxes = rects_px.astype(np.float32) / np.array([width, height, width, height], np.float32)
    return tf.constant(image), tf.constant(boxes), tf.constant([0, 1, 2], tf.int32)


def _check_boxes_cover_their_rectangles(image, boxes, labels, margin=1.5, what=""):
    """Every output box's interior shows its rectangle's colour, and every pure pixel of that colour is in the box."""
    image = np.asarray(image)
    height, width = image.shape[:2]
    assert np.all(np.asarray(boxes) >= -1e-6) and np.all(np.asarray(boxes) <= 1 + 1e-6), what
    checked = 0
    for box, label in zip(np.asarray(boxes), np.asarray(labels)):
        colour = np.array(COLOURS[label])
        pure = np.all(np.abs(image - colour) < 2.0, axis=-1)
        x0, y0, x1, y1 = box * [width, height, width, height]
        ys, xs = np.nonzero(pure)
        if xs.size:  # pure pixels of this colour lie inside the box (pixel centres, one pixel of blending slack)
            assert xs.min() + 0.5 >= x0 - 1.0 and xs.max() + 0.5 <= x1 + 1.0, what
            assert ys.min() + 0.5 >= y0 - 1.0 and ys.max() + 0.5 <= y1 + 1.0, what
        rows = slice(int(np.ceil(y0 + margin)), int(np.floor(y1 - margin)))
        inner = image[rows, int(np.ceil(x0 + margin)) : int(np.floor(x1 - margin))]
        if inner.shape[0] >= 1 and inner.shape[1] >= 1:
            close = np.all(np.abs(inner - colour) < 2.0, axis=-1)
            assert close.mean() > 0.95, (what, label, close.mean())
            checked += 1
    return checked


# ------------------------------------------------------------------------------------------------ geometric


def test_expand_pastes_image_on_fill_and_moves_boxes():
    image, boxes, labels = _painted_scene()
    grown = 0
    for k in range(12):
        canvas, new_boxes = augment.random_expand(image, boxes, _seed(7, k), probability=1.0)
        canvas = canvas.numpy()
        assert canvas.shape[0] >= 60 and canvas.shape[1] >= 80
        _check_boxes_cover_their_rectangles(canvas, new_boxes, labels, what=f"expand {k}")
        # The image appears unchanged at one integer offset; the rest is the reference's mean in RGB order.
        is_fill = np.all(canvas == np.array(augment.EXPAND_FILL_RGB), axis=-1)
        assert is_fill.sum() == canvas.shape[0] * canvas.shape[1] - 60 * 80
        ys, xs = np.nonzero(~is_fill)
        np.testing.assert_array_equal(canvas[ys.min() : ys.min() + 60, xs.min() : xs.min() + 80], image.numpy())
        grown += canvas.shape[0] > 60
    assert augment.EXPAND_FILL_RGB == (123.0, 117.0, 104.0)  # B,G,R (104,117,123) of the reference, in R,G,B
    assert grown >= 10
    same, same_boxes = augment.random_expand(image, boxes, _seed(7, 0), probability=0.0)
    np.testing.assert_array_equal(same, image)
    np.testing.assert_allclose(same_boxes, boxes, atol=1e-6)


def test_crop_keeps_boxes_consistent_and_drops_labels():
    image, boxes, labels = _painted_scene()
    cropped_count, dropped_count = 0, 0
    for k in range(60):
        for chain in ("reference", "corrected"):
            out, out_boxes, out_labels = augment.random_sample_crop(image, boxes, labels, _seed(8, k), chain=chain)
            out = out.numpy()
            assert out_boxes.shape[0] == out_labels.shape[0] >= 1
            _check_boxes_cover_their_rectangles(out, out_boxes, out_labels, what=f"crop {k} {chain}")
            # A dropped label's colour has its centre outside the crop: at most a sliver of it may remain.
            for label in set(range(3)) - set(out_labels.numpy().tolist()):
                pure = np.all(np.abs(out - np.array(COLOURS[label])) < 2.0, axis=-1)
                assert pure.sum() <= 0.5 * RECT_AREAS[label]
                dropped_count += 1
            cropped_count += out.shape[:2] != (60, 80)
            # Crops are at least 0.3 of each side (whole pixels) with aspect ratio in [0.5, 2].
            assert out.shape[0] >= 0.3 * 60 - 1 and out.shape[1] >= 0.3 * 80 - 1
            assert 0.5 - 0.05 <= out.shape[0] / out.shape[1] <= 2.0 + 0.05
    assert cropped_count > 60 and dropped_count > 5


def test_crop_reference_quirks_versus_corrected():
    boxes = tf.constant([[30.0, 30.0, 50.0, 50.0]])
    width = height = tf.constant(100.0)
    # min IoU 0.7: the reference's test never rejects, the corrected one enforces IoU >= 0.7.
    for reference in (True, False):
        rects, valid, _ = augment._crop_candidates(_seed(1), width, height, boxes, tf.constant(0.7), reference, 500)
        ious = augment._box_iou_with_rects(boxes, rects)[:, 0].numpy()
        valid = valid.numpy()
        if reference:
            assert np.any(valid & (ious < 0.7))
        else:
            assert np.all(ious[valid] >= 0.7)
        lefts = rects[:, 0].numpy()
        widths = (rects[:, 2] - rects[:, 0]).numpy()
        narrow = widths < 99.0
        if reference:  # NumPy uniform(W - w) = uniform(W - w, 1): left >= 1 whenever W - w > 1
            assert np.all(lefts[narrow] >= 1.0)
        else:  # uniform in [0, W - w]: offsets near 0 appear, and the rect stays inside the image
            assert np.any(lefts[narrow] == 0.0)
        assert np.all(rects[:, 2].numpy() <= 100.0)


def test_mirror_and_resize_move_boxes_with_pixels():
    image, boxes, labels = _painted_scene()
    flipped, flipped_boxes = augment.random_mirror(image, boxes, _seed(0), probability=1.0)
    np.testing.assert_array_equal(flipped, image.numpy()[:, ::-1])
    _check_boxes_cover_their_rectangles(flipped, flipped_boxes, labels, what="mirror")
    for size in (30, (45, 120)):
        resized = augment.resize_image(flipped, size).numpy()
        assert resized.dtype == np.float32
        assert _check_boxes_cover_their_rectangles(resized, flipped_boxes, labels, what=f"resize {size}") == 3


def test_resize_is_half_pixel_bilinear_without_antialias():
    row = np.arange(8, dtype=np.float32)
    image = np.repeat(np.repeat(row[None, :, None], 8, axis=0), 3, axis=2)
    out = augment.resize_image(image, 2).numpy()
    # Half-pixel centres: output column j samples x = (j + 0.5) * 4 - 0.5 = 1.5, 5.5 -> mean of two neighbours.
    # (Antialiased resizing would average four pixels, aligned corners would sample 0 and 7.)
    np.testing.assert_allclose(out[0, :, 0], [1.5, 5.5])


def test_whole_chain_without_photometric_keeps_boxes_on_their_rectangles():
    image, boxes, labels = _painted_scene()
    shrunk = 0
    for k in range(40):
        out, out_boxes, out_labels = augment.ssd_augment(
            image, boxes, labels, _seed(11, k), 64, photometric=False, chain=("corrected", "reference")[k % 2]
        )
        assert out.shape == (64, 64, 3) and out_boxes.shape[0] == out_labels.shape[0] >= 1
        _check_boxes_cover_their_rectangles(out.numpy(), out_boxes, out_labels, what=f"chain {k}")
        shrunk += int(np.any(np.all(np.abs(out.numpy() - augment.EXPAND_FILL_RGB) < 1e-3, axis=-1)))
    assert shrunk > 5  # some chains expanded (fill visible)


def test_fused_chain_equals_the_composed_steps():
    """ssd_augment renders expand+crop+mirror+resize in one pass; it must equal running the steps one by one."""
    image = tf.random.stateless_uniform([23, 31, 3], _seed(6), maxval=255.0)
    boxes = tf.constant([[0.1, 0.1, 0.5, 0.5], [0.4, 0.3, 0.9, 0.8], [0.6, 0.05, 0.95, 0.3]])
    labels = tf.constant([4, 5, 6])
    key = tf.random.experimental.stateless_fold_in
    for k in range(12):
        seed = _seed(2, k)
        chain = "reference" if k % 2 == 0 else "corrected"
        fused = augment.ssd_augment(image, boxes, labels, seed, (17, 19), chain=chain)
        x = photometric.photometric_distort(image, key(seed, 1), chain=chain)
        x, b = augment.random_expand(x, boxes, key(seed, 2))
        x, b, kept_labels = augment.random_sample_crop(x, b, labels, key(seed, 3), chain=chain)
        x, b = augment.random_mirror(x, b, key(seed, 4))
        x = augment.resize_image(x, (17, 19))
        np.testing.assert_allclose(fused[0], x, atol=1e-3)
        np.testing.assert_allclose(fused[1], b, atol=1e-6)
        np.testing.assert_array_equal(fused[2], kept_labels)


def test_chain_is_deterministic_per_seed_and_handles_no_boxes():
    image, boxes, labels = _painted_scene(30, 40)
    a = augment.ssd_augment(image, boxes, labels, _seed(1, 2), 32)
    b = augment.ssd_augment(image, boxes, labels, _seed(1, 2), 32)
    c = augment.ssd_augment(image, boxes, labels, _seed(1, 3), 32)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert float(tf.reduce_max(tf.abs(a[0] - c[0]))) > 1.0
    empty = augment.ssd_augment(image, tf.zeros([0, 4]), tf.zeros([0], tf.int32), _seed(1, 4), 32)
    assert empty[0].shape == (32, 32, 3) and empty[1].shape == (0, 4) and empty[2].shape == (0,)


def test_chain_runs_in_a_parallel_dataset_map_deterministically():
    image, boxes, labels = _painted_scene(30, 40)

    def make(i):
        out = augment.ssd_augment(image, boxes, labels, tf.stack([tf.constant(3, tf.int64), i]), 24)
        return out[0], tf.shape(out[1])[0]

    ds = tf.data.Dataset.range(8).map(make, num_parallel_calls=4, deterministic=True)
    first = [x[0].numpy() for x in ds]
    second = [make(tf.constant(i, tf.int64))[0].numpy() for i in range(8)]
    for x, y in zip(first, second):
        np.testing.assert_allclose(x, y, atol=1e-4)


def test_bad_seed_is_rejected_with_a_clear_message():
    image, boxes, labels = _painted_scene(30, 40)
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        augment.ssd_augment(image, boxes, labels, tf.constant([1, 2, 3]), 32)
