"""Raw head outputs → detections: decode + softmax + per-class NMS, batched and in-graph
(docs/reference.md#detection-post-processing).

The reference's ``Detect`` keeps, per class, the 200 highest-scoring candidates above 0.01, runs greedy NMS on
exactly those (suppressing IoU > 0.45) and returns up to 200 boxes per class with no cross-class limit.  Keeping
the top-k *before* NMS matters: running NMS over all candidates would let boxes ranked below 200 replace
suppressed ones.  We reproduce that, vectorised over images and classes, and return the TF Object Detection
API contract so exported models and attack libraries see the familiar keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from robustdet_tf import boxes as box_ops

DETECTION_BOX_FORMAT = "rel_yxyx"
"""``detection_boxes`` of the TF Object Detection API contract: relative (ymin, xmin, ymax, xmax)."""


def greedy_nms_mask(boxes: tf.Tensor, valid: tf.Tensor, iou_threshold: float) -> tf.Tensor:
    """Greedy NMS over candidates already sorted by descending score.

    Args:
      boxes: ``[..., K, 4]`` corner boxes; ``valid``: ``[..., K]`` bool (candidates above the score threshold).

    Returns a ``[..., K]`` bool mask of kept boxes.  Box ``i`` is kept iff it is valid and no kept box ranked above
    it overlaps it with IoU > ``iou_threshold``.
    """
    iou = box_ops.pairwise_iou(boxes, boxes)  # [..., K, K]
    suppresses = iou > iou_threshold
    k = tf.shape(valid)[-1]
    keep0 = tf.zeros_like(valid)

    def body(i, keep):
        column = tf.gather(suppresses, i, axis=-1)  # [..., K]: does box j suppress box i
        blocked = tf.reduce_any(tf.logical_and(keep, column), axis=-1)
        keep_i = tf.logical_and(tf.gather(valid, i, axis=-1), tf.logical_not(blocked))
        hot = tf.one_hot(i, k, on_value=True, off_value=False)
        return i + 1, tf.logical_or(keep, tf.logical_and(hot, keep_i[..., None]))

    _, keep = tf.while_loop(lambda i, _: i < k, body, (tf.constant(0), keep0))
    return keep


def postprocess(
    loc: tf.Tensor,
    logits: tf.Tensor,
    priors: tf.Tensor,
    score_threshold: float = 0.01,
    pre_nms_top_k: int = 200,
    iou_threshold: float = 0.45,
    max_detections: int | None = None,
    variances: Sequence[float] = box_ops.VARIANCES,
) -> dict[str, tf.Tensor]:
    """Raw head outputs → detections in the TF Object Detection API contract.

    Args:
      loc: ``[B, P, 4]``; logits: ``[B, P, C]`` (class 0 = background); priors: ``[P, 4]`` centre form.
      score_threshold: candidates need softmax score strictly above it.
      pre_nms_top_k: candidates per class kept before NMS (and thus the most kept per class).
      max_detections: the output size ``M``, a cross-class limit (``None`` = all ``(C-1)·pre_nms_top_k`` slots, the
        reference's behaviour, which has no cross-class limit).

    Returns ``detection_boxes [B, M, 4]`` (relative ymin, xmin, ymax, xmax, not clipped), ``detection_scores
    [B, M]``, ``detection_classes [B, M]`` float32 (network class, 1-based) and ``num_detections [B]`` float32;
    rows past ``num_detections`` are zero.  Rows are sorted by descending score.
    """
    loc = tf.convert_to_tensor(loc, tf.float32)
    logits = tf.convert_to_tensor(logits, tf.float32)
    num_classes = logits.shape[-1]
    num_priors = tf.shape(logits)[1]
    boxes = box_ops.decode(loc, priors, variances)  # [B, P, 4]
    scores = tf.transpose(tf.nn.softmax(logits, axis=-1)[..., 1:], [0, 2, 1])  # [B, C-1, P]
    k = tf.minimum(pre_nms_top_k, num_priors)
    top_scores, top_idx = tf.math.top_k(scores, k=k, sorted=True)  # [B, C-1, K]
    top_boxes = tf.gather(boxes, top_idx, batch_dims=1)  # [B, C-1, K, 4]
    valid = top_scores > score_threshold
    keep = greedy_nms_mask(top_boxes, valid, iou_threshold)

    batch = tf.shape(logits)[0]
    kept_scores = tf.reshape(tf.where(keep, top_scores, -1.0), [batch, -1])
    classes = tf.broadcast_to(tf.range(1, num_classes, dtype=tf.float32)[None, :, None], tf.shape(top_scores))
    flat_classes = tf.reshape(classes, [batch, -1])
    flat_boxes = tf.reshape(top_boxes, [batch, -1, 4])
    if max_detections is not None:  # a fixed output size, padded when there are fewer slots
        pad = tf.maximum(max_detections - tf.shape(kept_scores)[1], 0)
        kept_scores = tf.pad(kept_scores, [[0, 0], [0, pad]], constant_values=-1.0)
        flat_classes = tf.pad(flat_classes, [[0, 0], [0, pad]])
        flat_boxes = tf.pad(flat_boxes, [[0, 0], [0, pad], [0, 0]])
    m = tf.shape(kept_scores)[1] if max_detections is None else max_detections
    out_scores, order = tf.math.top_k(kept_scores, k=m, sorted=True)
    is_det = out_scores > -1.0
    det_f = tf.cast(is_det, tf.float32)
    return {
        "detection_boxes": box_ops.convert_format(
            tf.gather(flat_boxes, order, batch_dims=1), box_ops.BOX_FORMAT, DETECTION_BOX_FORMAT
        ) * det_f[..., None],
        "detection_scores": tf.maximum(out_scores, 0.0) * det_f,
        "detection_classes": tf.gather(flat_classes, order, batch_dims=1) * det_f,
        "num_detections": tf.reduce_sum(det_f, axis=-1),
    }
