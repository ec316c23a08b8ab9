"""Box primitives shared by the detector, losses, attacks and post-processing.

Everything here follows the reference code (docs/reference.md#prior-boxes,
docs/reference.md#box-coding-and-matching) so that priors, targets and decoded boxes are
bit-for-bit comparable with the official checkpoints:

* Priors are ``(cx, cy, w, h)`` relative to the image ("centre form"), generated source-major, then row, column,
  anchor — the order a channels-last reshape of the head outputs produces.
* Ground truth and decoded boxes are relative corners ``(x_min, y_min, x_max, y_max)`` — ``BOX_FORMAT`` =
  ``"rel_xyxy"`` in ``keras.utils.bounding_boxes`` terms.  IoU uses plain areas (no ``+1``).
* Matching is batched over padded ground truth (label ``-1`` = padding) so it runs in-graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

VARIANCES = (0.1, 0.2)

BOX_FORMAT = "rel_xyxy"
"""The one box format inside the package (targets, decoded boxes); everything else is converted at the edges."""

# The formats of ``keras.utils.bounding_boxes``: corners, corner + size, centre + size; ``rel_`` = divided by (W, H).
FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw",
           "rel_xyxy", "rel_yxyx", "rel_xywh", "rel_center_xywh", "rel_center_yxhw")


def _stack(parts, like):
    return np.stack(parts, axis=-1) if isinstance(like, np.ndarray) else tf.stack(parts, axis=-1)


def _to_rel_xyxy(boxes, fmt: str, height, width):
    """Any format → ``rel_xyxy`` (corners divided by the image width and height)."""
    a, b, c, d = (boxes[..., i] for i in range(4))
    if fmt.endswith("yxyx") or fmt.endswith("yxhw"):
        a, b, c, d = b, a, d, c  # to x-first order
    if "center" in fmt:
        a, b, c, d = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    elif fmt.endswith("xywh"):
        c, d = a + c, b + d
    if not fmt.startswith("rel_"):
        a, b, c, d = a / width, b / height, c / width, d / height
    return a, b, c, d


def _from_rel_xyxy(parts, fmt: str, height, width):
    x0, y0, x1, y1 = parts
    if not fmt.startswith("rel_"):
        x0, y0, x1, y1 = x0 * width, y0 * height, x1 * width, y1 * height
    if "center" in fmt:
        x0, y0, x1, y1 = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    elif fmt.endswith("xywh"):
        x1, y1 = x1 - x0, y1 - y0
    if fmt.endswith("yxyx") or fmt.endswith("yxhw"):
        x0, y0, x1, y1 = y0, x0, y1, x1
    return x0, y0, x1, y1


def convert_format(boxes, source: str, target: str, height=None, width=None):
    """Convert ``[..., 4]`` boxes between ``keras.utils.bounding_boxes``' formats (NumPy in → NumPy out, else TF).

    The one box converter of the package: readers convert their file's format to ``BOX_FORMAT`` with it, and the
    detection contract, the metrics and the exports convert from it.  ``height`` and ``width`` (scalars or arrays
    broadcasting against ``boxes[..., 0]``) are needed when exactly one side is in pixels.
    """
    for fmt in (source, target):
        if fmt not in FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; choose one of {FORMATS}")
    if source == target:
        return boxes
    if source.startswith("rel_") != target.startswith("rel_") and (height is None or width is None):
        raise ValueError(f"converting boxes from {source!r} to {target!r} needs the image height and width")
    if not isinstance(boxes, np.ndarray):
        boxes = tf.convert_to_tensor(boxes, tf.float32)
    height = 1.0 if height is None else height
    width = 1.0 if width is None else width
    return _stack(_from_rel_xyxy(_to_rel_xyxy(boxes, source, height, width), target, height, width), boxes)


def pairwise_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """IoU of corner boxes ``a [..., N, 4]`` with ``b [..., M, 4]`` → ``[..., N, M]`` (plain areas, no +1)."""
    a = tf.convert_to_tensor(a, tf.float32)
    b = tf.convert_to_tensor(b, tf.float32)
    lo = tf.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = tf.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = tf.maximum(hi - lo, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return tf.math.divide_no_nan(inter, union)


def encode(matched: tf.Tensor, priors: tf.Tensor, variances: Sequence[float] = VARIANCES) -> tf.Tensor:
    """Regression targets of corner boxes ``matched`` relative to centre-form ``priors``
    (docs/reference.md#box-coding-and-matching).

    Widths are floored at 1e-12 before the log so a degenerate box gives a large finite target rather than -inf.
    """
    priors = tf.convert_to_tensor(priors, tf.float32)
    centre = ((matched[..., :2] + matched[..., 2:]) / 2 - priors[..., :2]) / (variances[0] * priors[..., 2:])
    size = tf.math.log(tf.maximum(matched[..., 2:] - matched[..., :2], 1e-12) / priors[..., 2:]) / variances[1]
    return tf.concat([centre, size], axis=-1)


def decode(loc: tf.Tensor, priors: tf.Tensor, variances: Sequence[float] = VARIANCES) -> tf.Tensor:
    """Predicted offsets → corner boxes (not clipped, as in the reference)."""
    priors = tf.convert_to_tensor(priors, tf.float32)
    centre = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    size = priors[..., 2:] * tf.exp(loc[..., 2:] * variances[1])
    return tf.concat([centre - size / 2, centre + size / 2], axis=-1)


def match(
    gt_boxes: tf.Tensor,
    gt_labels: tf.Tensor,
    priors: tf.Tensor,
    threshold: float = 0.5,
    variances: Sequence[float] = VARIANCES,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Match padded ground truth to priors, batched, with the reference's algorithm
    (docs/reference.md#box-coding-and-matching).

    Args:
      gt_boxes: ``[B, N, 4]`` rel_xyxy.
      gt_labels: ``[B, N]`` 0-based class, ``-1`` = padding.
      priors: ``[P, 4]`` centre form.

    Returns:
      ``loc_targets [B, P, 4]`` (encoded), ``conf_targets [B, P]`` int32 (0 = background, else label + 1) and
      ``matched_index [B, P]`` (index of the ground truth each prior was assigned to, before thresholding).

    Every prior takes its best-overlapping ground truth; every ground truth then claims its own best prior
    (overlap forced to 2), looping over ground truth in order so a later one wins a collision; priors whose
    overlap stays below ``threshold`` become background.
    """
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_labels = tf.cast(gt_labels, tf.int32)
    priors = tf.convert_to_tensor(priors, tf.float32)
    num_priors = tf.shape(priors)[0]
    valid = gt_labels >= 0  # [B, N]

    overlaps = pairwise_iou(gt_boxes, convert_format(priors, "rel_center_xywh", BOX_FORMAT)[None])  # [B, N, P]
    overlaps = tf.where(valid[..., None], overlaps, -1.0)
    best_truth_overlap = tf.reduce_max(overlaps, axis=1)  # [B, P]
    best_truth_idx = tf.argmax(overlaps, axis=1, output_type=tf.int32)  # [B, P]
    best_prior_idx = tf.argmax(overlaps, axis=2, output_type=tf.int32)  # [B, N]

    # Forced assignment: prior p goes to the last valid GT j whose best prior is p.
    claims = tf.logical_and(tf.one_hot(best_prior_idx, num_priors, on_value=True, off_value=False), valid[..., None])
    gt_index = tf.range(tf.shape(gt_labels)[1], dtype=tf.int32)[None, :, None]
    claimant = tf.reduce_max(tf.where(claims, gt_index, -1), axis=1)  # [B, P]
    forced = claimant >= 0
    best_truth_idx = tf.where(forced, claimant, best_truth_idx)
    best_truth_overlap = tf.where(forced, 2.0, best_truth_overlap)

    matched_boxes = tf.gather(gt_boxes, best_truth_idx, batch_dims=1)  # [B, P, 4]
    matched_labels = tf.gather(gt_labels, best_truth_idx, batch_dims=1)  # [B, P]
    conf = tf.where(best_truth_overlap < threshold, 0, matched_labels + 1)
    loc = encode(matched_boxes, priors, variances)
    return loc, conf, best_truth_idx
