"""Decode + per-class NMS on hand-made boxes: what is kept and suppressed, and the output contract."""

import numpy as np
import tensorflow as tf

from robustdet_tf import boxes
from robustdet_tf.detections import postprocess


def priors_from_corners(corners):
    return boxes.convert_format(tf.constant(corners, tf.float32), "rel_xyxy", "rel_center_xywh")


def logits_for(scores):
    """Logits whose softmax gives ``scores`` (rows: priors, columns: object classes; background = the rest)."""
    scores = np.asarray(scores, np.float64)
    full = np.concatenate([1.0 - scores.sum(-1, keepdims=True), scores], -1)
    return tf.constant(np.log(full)[None], tf.float32)


def shifted(x):
    return [x, 0.0, x + 0.4, 0.4]


def run(corners, scores, **kw):
    priors = priors_from_corners(corners)
    out = postprocess(tf.zeros([1, len(corners), 4]), logits_for(scores), priors, **kw)
    return {k: v.numpy()[0] for k, v in out.items()}


def iou_of_shift(x):
    return (0.4 - x) / (0.4 + x)


def test_suppresses_above_045_and_keeps_below():
    # Shifts giving IoU just above and just below 0.45 with the first box.
    above = 0.4 * (1 - 0.46) / (1 + 0.46)
    below = 0.4 * (1 - 0.44) / (1 + 0.44)
    assert iou_of_shift(above) > 0.45 > iou_of_shift(below)
    out = run([shifted(0), shifted(above), shifted(2.0)], [[0.9], [0.8], [0.7]])
    assert out["num_detections"] == 2
    np.testing.assert_allclose(out["detection_scores"][:2], [0.9, 0.7], rtol=1e-5)
    out = run([shifted(0), shifted(below)], [[0.9], [0.8]])
    assert out["num_detections"] == 2


def test_suppression_is_greedy_in_score_order():
    # B overlaps A (suppressed); C overlaps B but not A → C survives because B was suppressed first.
    a, b, c = shifted(0.0), shifted(0.1), shifted(0.2)
    assert iou_of_shift(0.1) > 0.45 and iou_of_shift(0.2) < 0.45
    out = run([a, b, c], [[0.9], [0.8], [0.7]])
    np.testing.assert_allclose(out["detection_scores"][: int(out["num_detections"])], [0.9, 0.7], rtol=1e-5)


def test_score_threshold_is_strict_and_configurable():
    out = run([shifted(0), shifted(1.0)], [[0.3], [0.2]], score_threshold=0.25)
    assert out["num_detections"] == 1
    out = run([shifted(0), shifted(1.0)], [[0.3], [0.005]])  # default 0.01
    assert out["num_detections"] == 1


def test_top_k_is_taken_before_nms():
    # With pre_nms_top_k=2 only A and B are candidates: B is suppressed by A and C is never considered.
    corners = [shifted(0.0), shifted(0.05), shifted(2.0)]
    out = run(corners, [[0.9], [0.8], [0.7]], pre_nms_top_k=2)
    assert out["num_detections"] == 1
    out = run(corners, [[0.9], [0.8], [0.7]], pre_nms_top_k=3)
    assert out["num_detections"] == 2


def test_classes_are_independent_and_output_contract():
    corners = [[0.1, 0.2, 0.5, 0.6]]
    out = run(corners, [[0.6, 0.3]], max_detections=5)
    assert out["detection_boxes"].shape == (5, 4)
    assert out["num_detections"] == 2
    np.testing.assert_allclose(out["detection_scores"], [0.6, 0.3, 0, 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"], [1, 2, 0, 0, 0])
    np.testing.assert_allclose(out["detection_boxes"][0], [0.2, 0.1, 0.6, 0.5], atol=1e-6)  # ymin, xmin, ymax, xmax
    np.testing.assert_array_equal(out["detection_boxes"][2:], 0)


def test_decoding_and_batching():
    priors = priors_from_corners([[0.2, 0.2, 0.4, 0.4]])
    loc = tf.constant([[[0.0, 0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0, 0.0]]])
    logits = tf.concat([logits_for([[0.9]]), logits_for([[0.5]])], 0)
    out = postprocess(loc, logits, priors, max_detections=2)
    boxes_out = out["detection_boxes"].numpy()
    np.testing.assert_allclose(boxes_out[0, 0], [0.2, 0.2, 0.4, 0.4], atol=1e-6)
    np.testing.assert_allclose(boxes_out[1, 0], [0.2, 0.22, 0.4, 0.42], atol=1e-6)  # cx += 1·0.1·w
    np.testing.assert_allclose(out["detection_scores"].numpy()[:, 0], [0.9, 0.5], rtol=1e-5)


def test_runs_in_graph_with_unknown_batch():
    priors = priors_from_corners([shifted(0), shifted(1.0)])
    fn = tf.function(
        lambda loc, logits: postprocess(loc, logits, priors, max_detections=4),
        input_signature=[tf.TensorSpec([None, 2, 4]), tf.TensorSpec([None, 2, 3])],
    )
    logits = tf.concat([logits_for([[0.9, 0.001], [0.2, 0.7]])] * 3, 0)
    out = fn(tf.zeros([3, 2, 4]), logits)
    np.testing.assert_array_equal(out["num_detections"].numpy(), [3, 3, 3])
    assert out["detection_scores"].shape == (3, 4)
