"""Priors, IoU, box coding and matching against the numbers of spec §2.6, §2.7 and §12."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf import boxes

VOC_PRIORS = boxes.ssd300_priors("voc")
EXAMPLE_GT = np.array([[[0.1, 0.2, 0.5, 0.7], [0.6, 0.1, 0.9, 0.4]]], np.float32)
EXAMPLE_LABELS = np.array([[4, 11]], np.int32)


def test_prior_counts_and_starts():
    assert VOC_PRIORS.shape == (8732, 4)
    per_cell = boxes.boxes_per_location(boxes.SSD300_ASPECT_RATIOS)
    counts = [f * f * a for f, a in zip(boxes.SSD300_FEATURE_MAPS, per_cell)]
    assert counts == [5776, 2166, 600, 150, 36, 4]
    assert list(np.cumsum([0] + counts[:-1])) == [0, 5776, 7942, 8542, 8692, 8728]
    assert boxes.ssd300_priors("coco").shape == (8732, 4)


@pytest.mark.parametrize(
    "index, expected",
    [
        (0, (0.013333, 0.013333, 0.1, 0.1)),
        (1, (0.013333, 0.013333, 0.141421, 0.141421)),
        (2, (0.013333, 0.013333, 0.141421, 0.070711)),
        (3, (0.013333, 0.013333, 0.070711, 0.141421)),
        (4, (0.04, 0.013333, 0.1, 0.1)),
        (5776, (0.026667, 0.026667, 0.2, 0.2)),
        (5777, (0.026667, 0.026667, 0.272029, 0.272029)),
        (5780, (0.026667, 0.026667, 0.346410, 0.115470)),
        (8728, (0.5, 0.5, 0.88, 0.88)),
        (8729, (0.5, 0.5, 0.961249, 0.961249)),
        (8730, (0.5, 0.5, 1.0, 0.622254)),
        (8731, (0.5, 0.5, 0.622254, 1.0)),
    ],
)
def test_voc_priors(index, expected):
    np.testing.assert_allclose(VOC_PRIORS[index], expected, atol=1e-6)


def test_coco_priors():
    coco = boxes.ssd300_priors("coco")
    np.testing.assert_allclose(coco[0], (0.013333, 0.013333, 0.07, 0.07), atol=1e-6)
    np.testing.assert_allclose(coco[2], (0.013333, 0.013333, 0.098995, 0.049497), atol=1e-6)
    np.testing.assert_allclose(coco[-3], (0.5, 0.5, 0.955772, 0.955772), atol=1e-6)
    np.testing.assert_allclose(coco[-1], (0.5, 0.5, 0.615183, 1.0), atol=1e-6)


def test_priors_for_other_sizes_and_bad_config():
    p = boxes.prior_boxes(64, (8, 4), (8, 20), (20, 38), ((2,), (2, 3)))
    assert p.shape == (8 * 8 * 4 + 4 * 4 * 6, 4)
    np.testing.assert_allclose(p[0], (0.5 / 8, 0.5 / 8, 8 / 64, 8 / 64), atol=1e-7)
    assert p.min() >= 0 and p.max() <= 1
    with pytest.raises(ValueError, match="one entry per source"):
        boxes.prior_boxes(64, (8, 4), (8,), (20, 38), ((2,), (2,)))


def test_iou_and_forms():
    a = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(boxes.pairwise_iou(a, b).numpy(), [[1 / 7, 0.0, 1.0]], rtol=1e-6)
    c = tf.constant([[0.5, 0.4, 0.2, 0.6]])
    np.testing.assert_allclose(boxes.center_form(boxes.point_form(c)).numpy(), c.numpy(), atol=1e-7)
    np.testing.assert_allclose(boxes.xyxy_to_yxyx(tf.constant([1.0, 2.0, 3.0, 4.0])).numpy(), [2, 1, 4, 3])


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.5, (50, 2))
    gt = np.concatenate([lo, lo + rng.uniform(0.05, 0.5, (50, 2))], -1).astype(np.float32)
    priors = VOC_PRIORS[rng.integers(0, 8732, 50)]
    np.testing.assert_allclose(boxes.decode(boxes.encode(gt, priors), priors).numpy(), gt, atol=1e-5)


def test_matching_example_of_the_spec():
    loc, conf, _ = boxes.match(EXAMPLE_GT, EXAMPLE_LABELS, VOC_PRIORS)
    conf = conf.numpy()[0]
    assert (conf > 0).sum() == 25
    assert (conf == 5).sum() == 13 and (conf == 12).sum() == 12
    iou = boxes.pairwise_iou(EXAMPLE_GT[0], boxes.point_form(VOC_PRIORS)).numpy()
    assert list(iou.argmax(axis=1)) == [8195, 6317]
    np.testing.assert_allclose(iou.max(axis=1), [0.76306, 0.77215], atol=1e-5)
    np.testing.assert_allclose(loc.numpy()[0, 8195], (0.745729, -0.671156, -0.555358, 0.560360), atol=1e-5)


def test_matching_is_batched_over_padding():
    padded = np.concatenate([EXAMPLE_GT, np.zeros((1, 3, 4), np.float32)], axis=1)
    labels = np.concatenate([EXAMPLE_LABELS, -np.ones((1, 3), np.int32)], axis=1)
    single = np.array([[[0.3, 0.3, 0.6, 0.6], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    single_labels = np.array([[2, -1, -1, -1, -1]], np.int32)
    loc, conf, _ = boxes.match(
        np.concatenate([padded, single]), np.concatenate([labels, single_labels]), VOC_PRIORS
    )
    loc_a, conf_a, _ = boxes.match(EXAMPLE_GT, EXAMPLE_LABELS, VOC_PRIORS)
    loc_b, conf_b, _ = boxes.match(single[:, :1], single_labels[:, :1], VOC_PRIORS)
    np.testing.assert_array_equal(conf.numpy(), np.concatenate([conf_a.numpy(), conf_b.numpy()]))
    np.testing.assert_allclose(loc.numpy()[0][conf.numpy()[0] > 0], loc_a.numpy()[0][conf_a.numpy()[0] > 0])
    empty_conf = boxes.match(np.zeros((1, 2, 4), np.float32), -np.ones((1, 2), np.int32), VOC_PRIORS)[1]
    assert int(tf.reduce_sum(empty_conf)) == 0


def test_forced_match_later_ground_truth_wins():
    # Two identical boxes share their best prior: the reference's loop gives it to the later one.
    gt = np.array([[[0.2, 0.2, 0.6, 0.6], [0.2, 0.2, 0.6, 0.6]]], np.float32)
    _, conf, idx = boxes.match(gt, np.array([[0, 1]]), VOC_PRIORS)
    best = int(boxes.pairwise_iou(gt[0, :1], boxes.point_form(VOC_PRIORS)).numpy().argmax())
    assert int(idx[0, best]) == 1 and int(conf[0, best]) == 2
    # A tiny box below the threshold everywhere still gets its best prior (overlap forced to 2).
    tiny = np.array([[[0.5, 0.5, 0.505, 0.505]]], np.float32)
    _, conf, _ = boxes.match(tiny, np.array([[3]]), VOC_PRIORS)
    assert int(tf.reduce_sum(tf.cast(conf > 0, tf.int32))) == 1 and int(tf.reduce_max(conf)) == 4


def test_matching_runs_in_graph():
    fn = tf.function(lambda b, lab: boxes.match(b, lab, VOC_PRIORS)[1], reduce_retracing=True)
    out = fn(tf.constant(EXAMPLE_GT), tf.constant(EXAMPLE_LABELS))
    assert int(tf.reduce_sum(tf.cast(out > 0, tf.int32))) == 25
