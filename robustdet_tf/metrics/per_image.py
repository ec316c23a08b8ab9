"""Batched detections and padded targets → per-image NumPy records, shared by the VOC and COCO metrics.

Why a module of its own: both metrics accumulate per image outside the graph (the reference's VOC code and
pycocotools are NumPy/Python), and both must reject a wrong layout with a message instead of scoring garbage.  The
contract of the dicts is in ``robustdet_tf/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np


class ImageDetections(NamedTuple):
    """One image's valid detections: ``boxes`` [m, 4] relative yxyx, ``scores`` [m], ``classes`` [m] int (1-based)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


class ImageGroundTruth(NamedTuple):
    """One image's non-padding GT: ``boxes`` [n, 4] rel_xyxy, ``labels`` [n] 0-based, ``difficult`` [n] bool,
    ``size`` (height, width) or ``None``, ``image_id`` or ``None``."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    size: tuple[int, int] | None
    image_id: Any


def _as_numpy(value: Any) -> np.ndarray:
    """Accepts NumPy arrays, Python sequences and eager TF tensors (which implement ``__array__``)."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _require(batch: Mapping[str, Any], key: str, what: str) -> np.ndarray:
    if key not in batch:
        raise KeyError(f"{what} has no '{key}' entry (keys: {sorted(batch)}); see the contract in "
                       "robustdet_tf/__init__.py.")
    return _as_numpy(batch[key])


def unbatch_detections(detections: Mapping[str, Any]) -> list[ImageDetections]:
    """Splits an OD-API detection batch into per-image arrays, dropping rows past ``num_detections``.

    Classes are rounded to int (the OD API stores them as float).  Shapes are checked so that a wrong layout fails
    here with a message instead of producing a silently wrong mAP.
    """
    what = "detections"
    boxes = _require(detections, "detection_boxes", what).astype(np.float32, copy=False)
    scores = _require(detections, "detection_scores", what).astype(np.float32, copy=False)
    classes = _require(detections, "detection_classes", what)
    num = _require(detections, "num_detections", what)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"detections['detection_boxes'] must be [B, M, 4] (relative ymin, xmin, ymax, xmax); "
                         f"got shape {boxes.shape}.")
    batch, max_det = boxes.shape[:2]
    for key, arr in (("detection_scores", scores), ("detection_classes", classes)):
        if arr.shape != (batch, max_det):
            raise ValueError(f"detections['{key}'] must be [B, M] = {(batch, max_det)} like detection_boxes; "
                             f"got shape {arr.shape}.")
    num = num.reshape(-1)
    if num.shape != (batch,):
        raise ValueError(f"detections['num_detections'] must be [B] = [{batch}]; got shape {num.shape}.")
    num = np.rint(num).astype(np.int64)
    if np.any(num < 0) or np.any(num > max_det):
        raise ValueError(f"detections['num_detections'] must lie in [0, {max_det}]; got {num.tolist()}.")
    classes = np.rint(classes.astype(np.float64)).astype(np.int64)
    return [ImageDetections(boxes[i, :n], scores[i, :n], classes[i, :n]) for i, n in enumerate(num)]


def unbatch_ground_truth(ground_truth: Mapping[str, Any]) -> list[ImageGroundTruth]:
    """Splits a padded target batch into per-image arrays, dropping rows whose label is −1 (padding).

    ``difficult`` defaults to all False, ``original_size`` ([B, 2] height, width) and ``image_id`` to ``None``.
    """
    what = "ground_truth"
    boxes = _require(ground_truth, "boxes", what).astype(np.float32, copy=False)
    labels = _require(ground_truth, "labels", what)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"ground_truth['boxes'] must be [B, N, 4] rel_xyxy; got shape {boxes.shape}.")
    batch, max_gt = boxes.shape[:2]
    if labels.shape != (batch, max_gt):
        raise ValueError(f"ground_truth['labels'] must be [B, N] = {(batch, max_gt)}; got shape {labels.shape}.")
    labels = labels.astype(np.int64)
    if "difficult" in ground_truth:
        difficult = _as_numpy(ground_truth["difficult"]).astype(bool)
        if difficult.shape != (batch, max_gt):
            raise ValueError(f"ground_truth['difficult'] must be [B, N] = {(batch, max_gt)}; "
                             f"got shape {difficult.shape}.")
    else:
        difficult = np.zeros((batch, max_gt), bool)
    sizes: list[tuple[int, int] | None] = [None] * batch
    if "original_size" in ground_truth:
        size_arr = _as_numpy(ground_truth["original_size"])
        if size_arr.shape != (batch, 2):
            raise ValueError(f"ground_truth['original_size'] must be [B, 2] (height, width) = [{batch}, 2]; "
                             f"got shape {size_arr.shape}.")
        if np.any(size_arr <= 0):
            raise ValueError(f"ground_truth['original_size'] must be positive (height, width); got {size_arr}.")
        sizes = [(int(h), int(w)) for h, w in size_arr]
    ids: list[Any] = [None] * batch
    if "image_id" in ground_truth:
        id_arr = _as_numpy(ground_truth["image_id"]).reshape(-1)
        if id_arr.shape != (batch,):
            raise ValueError(f"ground_truth['image_id'] must be [B] = [{batch}]; got shape {id_arr.shape}.")
        ids = [v.decode() if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v for v in id_arr]
    out = []
    for i in range(batch):
        keep = labels[i] >= 0
        out.append(ImageGroundTruth(boxes[i][keep], labels[i][keep], difficult[i][keep], sizes[i], ids[i]))
    return out


def unbatch_pair(detections: Mapping[str, Any],
                 ground_truth: Mapping[str, Any]) -> tuple[list[ImageDetections], list[ImageGroundTruth]]:
    """Both halves of one metric update, refused unless they describe the same number of images."""
    dets = unbatch_detections(detections)
    gts = unbatch_ground_truth(ground_truth)
    if len(dets) != len(gts):
        raise ValueError(f"detections hold {len(dets)} images but ground_truth holds {len(gts)}; pass the "
                         "detections of exactly the images of the target batch.")
    return dets, gts
