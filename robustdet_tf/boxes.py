"""Box primitives shared by the detector, losses, attacks and post-processing.

Everything here follows the reference code (spec §2.6, §2.7) so that priors, targets and decoded boxes are
bit-for-bit comparable with the official checkpoints:

* Priors are ``(cx, cy, w, h)`` relative to the image ("centre form"), generated source-major, then row, column,
  anchor — the order a channels-last reshape of the head outputs produces.
* Ground truth and decoded boxes are relative corners ``(x_min, y_min, x_max, y_max)`` — ``BOX_FORMAT`` =
  ``"rel_xyxy"`` in ``keras.utils.bounding_boxes`` terms.  IoU uses plain areas (no ``+1``).
* Matching is batched over padded ground truth (label ``-1`` = padding) so it runs in-graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

VARIANCES = (0.1, 0.2)

# The two SSD300 prior configurations of the reference (spec §2.6).
SSD300_FEATURE_MAPS = (38, 19, 10, 5, 3, 1)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
VOC_MIN_SIZES = (30, 60, 111, 162, 213, 264)
VOC_MAX_SIZES = (60, 111, 162, 213, 264, 315)
COCO_MIN_SIZES = (21, 45, 99, 153, 207, 261)
COCO_MAX_SIZES = (45, 99, 153, 207, 261, 315)


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> tuple[int, ...]:
    """Anchors per feature-map cell: two squares plus two boxes per aspect ratio."""
    return tuple(2 + 2 * len(ars) for ars in aspect_ratios)


def prior_boxes(
    image_size: int,
    feature_maps: Sequence[int],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float] | None = None,
    clip: bool = True,
) -> np.ndarray:
    """Prior boxes ``[P, 4]`` in centre form, in the reference's order.

    ``steps`` gives the reference's ``f_k = image_size / step`` (37.5 for the 38 map of SSD300, not 38); when it is
    ``None`` the feature-map size itself is used, which is what a config for another image size wants.
    Sizes are in pixels of ``image_size``.  Clipping is applied to the centre form as the reference does.
    """
    if not (len(feature_maps) == len(min_sizes) == len(max_sizes) == len(aspect_ratios)):
        raise ValueError(
            "prior config lists must have one entry per source: got feature_maps="
            f"{list(feature_maps)}, min_sizes={list(min_sizes)}, max_sizes={list(max_sizes)}, "
            f"aspect_ratios={list(aspect_ratios)}"
        )
    if steps is not None and len(steps) != len(feature_maps):
        raise ValueError(f"steps {list(steps)} must have one entry per feature map {list(feature_maps)}")
    out = []
    for k, f in enumerate(feature_maps):
        f_k = image_size / steps[k] if steps is not None else float(f)
        s = min_sizes[k] / image_size
        s_prime = math.sqrt(s * (max_sizes[k] / image_size))
        shapes = [(s, s), (s_prime, s_prime)]
        for ar in aspect_ratios[k]:
            r = math.sqrt(ar)
            shapes += [(s * r, s / r), (s / r, s * r)]
        shapes = np.asarray(shapes, np.float64)  # [A, 2]
        rows, cols = np.meshgrid(np.arange(f), np.arange(f), indexing="ij")
        cx = (cols.reshape(-1) + 0.5) / f_k
        cy = (rows.reshape(-1) + 0.5) / f_k
        centres = np.stack([cx, cy], axis=-1)[:, None, :].repeat(len(shapes), axis=1)  # [f*f, A, 2]
        sizes = np.broadcast_to(shapes[None], centres.shape)
        out.append(np.concatenate([centres, sizes], axis=-1).reshape(-1, 4))
    priors = np.concatenate(out, axis=0)
    if clip:
        priors = np.clip(priors, 0.0, 1.0)
    return priors.astype(np.float32)


def ssd300_priors(dataset: str = "voc") -> np.ndarray:
    """The 8732 priors of the reference's VOC or COCO SSD300 configuration."""
    if dataset == "voc":
        mins, maxs = VOC_MIN_SIZES, VOC_MAX_SIZES
    elif dataset == "coco":
        mins, maxs = COCO_MIN_SIZES, COCO_MAX_SIZES
    else:
        raise ValueError(f"unknown SSD300 prior set {dataset!r}; use 'voc' or 'coco'")
    return prior_boxes(300, SSD300_FEATURE_MAPS, mins, maxs, SSD300_ASPECT_RATIOS, SSD300_STEPS)


def point_form(boxes: tf.Tensor) -> tf.Tensor:
    """Centre form ``(cx, cy, w, h)`` → corners ``(x_min, y_min, x_max, y_max)``."""
    boxes = tf.convert_to_tensor(boxes)
    return tf.concat([boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2], axis=-1)


def center_form(boxes: tf.Tensor) -> tf.Tensor:
    """Corners → centre form."""
    boxes = tf.convert_to_tensor(boxes)
    return tf.concat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], axis=-1)


def xyxy_to_yxyx(boxes: tf.Tensor) -> tf.Tensor:
    """Swap to the TF Object Detection API order (and back: the map is its own inverse)."""
    return tf.gather(boxes, [1, 0, 3, 2], axis=-1)


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
    """Regression targets of corner boxes ``matched`` relative to centre-form ``priors`` (spec §2.7).

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
    """Match padded ground truth to priors, batched, with the reference's algorithm (spec §2.7).

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

    overlaps = pairwise_iou(gt_boxes, point_form(priors)[None])  # [B, N, P]
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
