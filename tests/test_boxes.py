"""Priors, IoU, box coding and matching against the numbers of docs/reference.md#box-coding-and-matching."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf import boxes
from robustdet_tf.priors import ssd300_priors

VOC_PRIORS = ssd300_priors("voc")
EXAMPLE_GT = np.array([[[0.1, 0.2, 0.5, 0.7], [0.6, 0.1, 0.9, 0.4]]], np.float32)
EXAMPLE_LABELS = np.array([[4, 11]], np.int32)


def test_iou_and_forms():
    a = tf.constant([[0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    np.testing.assert_allclose(boxes.pairwise_iou(a, b).numpy(), [[1 / 7, 0.0, 1.0]], rtol=1e-6)
    c = tf.constant([[0.5, 0.4, 0.2, 0.6]])
    corners = boxes.convert_format(c, "rel_center_xywh", "rel_xyxy")
    np.testing.assert_allclose(corners.numpy(), [[0.4, 0.1, 0.6, 0.7]], atol=1e-7)
    np.testing.assert_allclose(boxes.convert_format(corners, "rel_xyxy", "rel_center_xywh").numpy(), c.numpy(),
                               atol=1e-7)
    np.testing.assert_allclose(boxes.convert_format(tf.constant([1.0, 2.0, 3.0, 4.0]), "rel_xyxy", "rel_yxyx"),
                               [2, 1, 4, 3])


@pytest.mark.parametrize("fmt", boxes.FORMATS)
def test_convert_format_round_trips_every_keras_format(fmt):
    rel = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.25, 1.0, 0.5]], np.float32)
    other = boxes.convert_format(rel, "rel_xyxy", fmt, height=40, width=80)
    assert isinstance(other, np.ndarray)  # NumPy in, NumPy out
    np.testing.assert_allclose(boxes.convert_format(other, fmt, "rel_xyxy", height=40, width=80), rel, atol=1e-6)
    back = boxes.convert_format(tf.constant(other), fmt, "rel_xyxy", height=40.0, width=80.0)
    np.testing.assert_allclose(back.numpy(), rel, atol=1e-6)


def test_convert_format_edges_of_the_package():
    # VOC XML: absolute corners; COCO json: absolute x, y, w, h; tfds: relative y-first corners.
    np.testing.assert_allclose(boxes.convert_format(np.array([10.0, 20.0, 50.0, 60.0]), "xyxy", "rel_xyxy",
                                                    height=100, width=200), [0.05, 0.2, 0.25, 0.6])
    np.testing.assert_allclose(boxes.convert_format(np.array([10.0, 20.0, 40.0, 40.0]), "xywh", "rel_xyxy",
                                                    height=100, width=200), [0.05, 0.2, 0.25, 0.6])
    np.testing.assert_allclose(boxes.convert_format(np.array([0.2, 0.05, 0.6, 0.25]), "rel_yxyx", "rel_xyxy"),
                               [0.05, 0.2, 0.25, 0.6])
    with pytest.raises(ValueError, match="needs the image height and width"):
        boxes.convert_format(np.zeros(4), "xyxy", "rel_xyxy")
    with pytest.raises(ValueError, match="unknown box format"):
        boxes.convert_format(np.zeros(4), "xyxy", "corners")


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
    iou = boxes.pairwise_iou(EXAMPLE_GT[0], boxes.convert_format(VOC_PRIORS, "rel_center_xywh", "rel_xyxy")).numpy()
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
    corners = boxes.convert_format(VOC_PRIORS, "rel_center_xywh", "rel_xyxy")
    best = int(boxes.pairwise_iou(gt[0, :1], corners).numpy().argmax())
    assert int(idx[0, best]) == 1 and int(conf[0, best]) == 2
    # A tiny box below the threshold everywhere still gets its best prior (overlap forced to 2).
    tiny = np.array([[[0.5, 0.5, 0.505, 0.505]]], np.float32)
    _, conf, _ = boxes.match(tiny, np.array([[3]]), VOC_PRIORS)
    assert int(tf.reduce_sum(tf.cast(conf > 0, tf.int32))) == 1 and int(tf.reduce_max(conf)) == 4


def test_matching_runs_in_graph():
    fn = tf.function(lambda b, lab: boxes.match(b, lab, VOC_PRIORS)[1], reduce_retracing=True)
    out = fn(tf.constant(EXAMPLE_GT), tf.constant(EXAMPLE_LABELS))
    assert int(tf.reduce_sum(tf.cast(out > 0, tf.int32))) == 25
