"""PASCAL VOC detection mAP, as the reference's ``eval_attack.py`` computes it (docs/reference.md#voc-map).

The paper's VOC numbers come from ssd.pytorch's Python port of the VOC devkit, so this accumulator reproduces
that code rather than the MATLAB devkit: per class, detections of all images are sorted by descending score and
matched greedily to the ground truth (GT) of their own image; the GT with the highest IoU is taken and the
detection is a match if that IoU is **strictly** greater than 0.5.  A match on a "difficult" GT is neither a true
nor a false positive; a second match on an already matched GT is a false positive (a duplicate); no match is a
false positive.  ``npos`` counts the non-difficult GT.  AP is the VOC2007 11-point interpolation
(``use_07_metric=True``, what the paper reports) or the VOC2010+ area under the monotone precision envelope.

Coordinate convention (``offsets``)
---------------------------------------------
The reference writes detections to text files and re-reads them, and parses GT from the XML:

* detection pixel box = relative box × (width, height) in float32, **+1**, written with 1 decimal;
  score written with 3 decimals (so scores tie more often, and sorting sees the rounded values);
* GT pixel box = XML integer **−1**.

The package's data readers already turn a VOC XML box into relative coordinates as ``(x − 1) / W``
(docs/reference.md#voc-data), so
``rel × W`` *is* the reference's GT (XML − 1).  The reference mode (``offsets="reference"``, the default, for
paper reproduction) therefore adds +1 to the detections only and rounds scores to 3 and detection coordinates
to 1 decimal exactly as the text files do (for float32 inputs ``np.round`` gives the same digits as Python's
``'{:.1f}'`` formatting).  GT pixel coordinates are rounded to 1 decimal as well: this restores the XML integers
exactly, which ``float32(rel) × W`` only approximates (by ~1e-5), and moves non-integer synthetic GT by at most
0.05 px.  The net effect is the reference's 2-pixel offset between detections and GT (det +1 vs. XML −1), which
costs a little AP; ``offsets="corrected"`` is the corrected mode: no offsets, no rounding, float64 throughout,
and a stable sort so that tied scores keep their input order.  IoU is scale-invariant per axis, so the exact mode
does not need the original image size (relative coordinates are used if it is absent); the reference mode does.

Other definitions
-----------------
* A class with GT but no detection gets AP 0 (the reference sets −1 and then crashes).
* A class with no non-difficult GT (``npos == 0``) gets AP ``nan`` and is left out of the mean, like the VOC2010+
  devkits and COCO.  (The reference would count 0 if that class had detections and crash otherwise; on VOC2007
  test every class has GT, so the paper's numbers are unaffected.)
* Detections with score ≤ 0 are skipped (the reference's filter of Detect's zero padding); rows past
  ``num_detections`` are padding and are never read.
* Sort order: NumPy's default ``argsort`` of the negated rounded scores in the reference mode, like the reference.
  Tied scores then come out in an order that depends on NumPy's sorting kernel (version and CPU); the reference's
  order among ties is not reproducible bit for bit anyway.

This runs outside the graph on NumPy; tensors are accepted and converted with ``np.asarray``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robustdet_tf.behaviour import REFERENCE, RENAMED_KEYS, checked
from robustdet_tf.boxes import BOX_FORMAT, convert_format
from robustdet_tf.detections import DETECTION_BOX_FORMAT
from robustdet_tf.labels import VOC_CLASSES
from robustdet_tf.metrics.bootstrap import RankedMatches
from robustdet_tf.metrics.per_image import unbatch_pair
from robustdet_tf.metrics.state import MetricStateError, concatenated, envelope, split_by_counts
from robustdet_tf.metrics.state import checked as checked_state

# Thresholds of the VOC07 11-point AP exactly as the reference builds them: np.arange accumulates 0.1, so the
# 4th, 7th and 8th values are 0.30000000000000004, 0.6000000000000001 and 0.7000000000000001, and a recall of
# exactly 3/10 does not reach the "0.3" point.  Kept on purpose for the reference's numbers.
_VOC07_RECALL_POINTS = np.arange(0.0, 1.1, 0.1)

# Upper bound on the number of float64 IoU entries computed at once (about 16 MB), to bound memory on big sets.
_IOU_CHUNK_ELEMENTS = 2_000_000


def compute_ap(recall: Any, precision: Any, use_07_metric: bool = True) -> float:
    """Average precision from a cumulative recall/precision curve (detections sorted by descending score).

    ``use_07_metric=True``: VOC2007 11-point AP, the mean over t ∈ {0, 0.1, …, 1} of the highest precision at
    recall ≥ t (0 where no point reaches t).  ``False``: VOC2010+ AP, the area under the precision envelope
    (precision made monotonically non-increasing from the right), summed where recall changes.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"compute_ap: recall has {rec.size} points but precision has {prec.size}; pass the two "
                         "cumulative curves of the same sorted detections.")
    if use_07_metric:
        ap = 0.0
        for t in _VOC07_RECALL_POINTS:
            reached = rec >= t
            ap += (np.max(prec[reached]) if np.any(reached) else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: max precision at this or any higher recall
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _iou_rows(det: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """IoU of det[i] with gt[i, j] (pixel xyxy, no +1, the reference's formula); −inf where not ``valid``."""
    ixmin = np.maximum(gt[..., 0], det[:, None, 0])
    iymin = np.maximum(gt[..., 1], det[:, None, 1])
    ixmax = np.minimum(gt[..., 2], det[:, None, 2])
    iymax = np.minimum(gt[..., 3], det[:, None, 3])
    inters = np.maximum(ixmax - ixmin, 0.0) * np.maximum(iymax - iymin, 0.0)
    det_area = (det[:, 2] - det[:, 0]) * (det[:, 3] - det[:, 1])
    gt_area = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inters / (det_area[:, None] + gt_area - inters)
    return np.where(valid, iou, -np.inf)



def migrated_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of a state written before ``reference_offsets`` (yes/no) became ``offsets`` (reference/corrected)."""
    if "reference_offsets" in settings:
        settings = dict(settings)
        settings["offsets"] = RENAMED_KEYS["reference_offsets"][1][bool(settings.pop("reference_offsets"))]
    return settings

class VOCMetric:
    """Accumulates detections and GT batch by batch; ``result()`` gives VOC mAP, per-class AP and PR curves.

    Args:
      class_names: object class names; name ``k`` belongs to label ``k`` / network class ``k + 1``.
      use_07_metric: 11-point VOC2007 AP (paper) or VOC2010+ all-point AP.
      iou_threshold: a detection matches if its best IoU is strictly greater than this.
      offsets: ``"reference"`` (ssd.pytorch's coordinates and rounding, see the module docstring) or
        ``"corrected"`` (exact).
      default_image_size: (height, width) used when a GT batch has no ``original_size``.  If both are missing,
        the corrected mode works in relative coordinates and the reference mode raises (its +1 offset is in pixels).
    """

    def __init__(
        self,
        class_names: Sequence[str] = VOC_CLASSES,
        use_07_metric: bool = True,
        iou_threshold: float = 0.5,
        offsets: str = REFERENCE,
        default_image_size: tuple[int, int] | None = None,
    ) -> None:
        self.class_names = tuple(class_names)
        if not self.class_names:
            raise ValueError("VOCMetric needs at least one class name.")
        self.use_07_metric = bool(use_07_metric)
        self.iou_threshold = float(iou_threshold)
        self.offsets = checked("VOCMetric offsets", offsets)
        self._reference = self.offsets == REFERENCE
        if default_image_size is not None:
            h, w = (int(v) for v in default_image_size)
            if h <= 0 or w <= 0:
                raise ValueError(f"default_image_size must be positive (height, width); got {default_image_size}.")
            default_image_size = (h, w)
        self.default_image_size = default_image_size
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return len(self._gt_boxes)

    def reset(self) -> None:
        """Forgets everything accumulated so far."""
        self._gt_boxes: list[np.ndarray] = []
        self._gt_labels: list[np.ndarray] = []
        self._gt_difficult: list[np.ndarray] = []
        self._det_image: list[np.ndarray] = []
        self._det_class: list[np.ndarray] = []
        self._det_score: list[np.ndarray] = []
        self._det_box: list[np.ndarray] = []

    def _pixel_scale(self, size: tuple[int, int] | None) -> tuple[float, float]:
        if size is None:
            size = self.default_image_size
        if size is None:
            if self._reference:
                raise ValueError("VOCMetric(offsets='reference') needs image sizes: the reference adds 1 pixel "
                                 "to detections.  Put 'original_size' ([B, 2] height, width) in the ground truth "
                                 "batch or pass default_image_size=(H, W).")
            return 1.0, 1.0
        return float(size[0]), float(size[1])

    def _detection_pixels(self, boxes: np.ndarray, height: float, width: float) -> np.ndarray:
        if not self._reference:
            return convert_format(boxes.astype(np.float64), DETECTION_BOX_FORMAT, "xyxy", height, width)
        # float32 product like the reference's in-place tensor scaling, then "+1" and the 1-decimal text file.
        pixels = convert_format(boxes.astype(np.float32), DETECTION_BOX_FORMAT, "xyxy", np.float32(height),
                                np.float32(width))
        return np.round(pixels.astype(np.float64) + 1.0, 1)

    def _gt_pixels(self, boxes: np.ndarray, height: float, width: float) -> np.ndarray:
        pixels = convert_format(boxes.astype(np.float64), BOX_FORMAT, "xyxy", height, width)
        return np.round(pixels, 1) if self._reference else pixels

    def update(self, detections: Mapping[str, Any], ground_truth: Mapping[str, Any]) -> None:
        """Adds one batch: OD-API ``detections`` and padded ``ground_truth`` of the same B images, in order."""
        dets, gts = unbatch_pair(detections, ground_truth)
        # Validate the whole batch before storing anything, so that a bad batch leaves the state untouched.
        scales, kept = [], []
        for det, gt in zip(dets, gts, strict=True):
            bad = gt.labels[gt.labels >= self.num_classes]
            if bad.size:
                raise ValueError(f"ground_truth['labels'] holds label {int(bad[0])} but VOCMetric has "
                                 f"{self.num_classes} class names (labels 0..{self.num_classes - 1}, -1 = padding); "
                                 "pass the dataset's class_names.")
            keep = det.scores > 0
            bad = det.classes[keep & ((det.classes < 1) | (det.classes > self.num_classes))]
            if bad.size:
                raise ValueError(f"detections['detection_classes'] holds class {int(bad[0])}, outside the network "
                                 f"classes 1..{self.num_classes} of the {self.num_classes} class names (0 is "
                                 "background and never a detection); pass the model's class_names.")
            scales.append(self._pixel_scale(gt.size))
            kept.append(keep)
        for det, gt, (height, width), keep in zip(dets, gts, scales, kept, strict=True):
            image_index = self.num_images
            self._gt_boxes.append(self._gt_pixels(gt.boxes, height, width))
            self._gt_labels.append(gt.labels)
            self._gt_difficult.append(gt.difficult)
            scores = det.scores[keep].astype(np.float64)
            self._det_score.append(np.round(scores, 3) if self._reference else scores)
            self._det_box.append(self._detection_pixels(det.boxes[keep], height, width))
            self._det_class.append(det.classes[keep])
            self._det_image.append(np.full(int(keep.sum()), image_index, np.int64))

    # -- exact state export / merge (sharded evaluation) ----------------------------------------------------------
    _STATE_KEYS = ("gt_counts", "gt_boxes", "gt_labels", "gt_difficult", "det_counts", "det_class", "det_score",
                   "det_box")

    def _settings(self) -> dict[str, Any]:
        return {"class_names": list(self.class_names), "use_07_metric": self.use_07_metric,
                "iou_threshold": self.iou_threshold, "offsets": self.offsets}

    def state(self) -> dict[str, np.ndarray]:
        """Everything accumulated, per image in update order, as NumPy arrays (``merge`` takes it back exactly).

        The records are the ones ``result()`` reads (pixel boxes and scores already converted and rounded), so a
        metric that merges the states of consecutive parts of a set holds the very arrays one pass would hold.
        """
        return {
            **envelope("voc", self._settings()),
            "gt_counts": np.array([len(b) for b in self._gt_labels], np.int64),
            "gt_boxes": concatenated(self._gt_boxes, np.zeros((0, 4))),
            "gt_labels": concatenated(self._gt_labels, np.zeros((0,), np.int64)),
            "gt_difficult": concatenated(self._gt_difficult, np.zeros((0,), bool)),
            "det_counts": np.array([len(c) for c in self._det_class], np.int64),
            "det_class": concatenated(self._det_class, np.zeros((0,), np.int64)),
            "det_score": concatenated(self._det_score, np.zeros((0,))),
            "det_box": concatenated(self._det_box, np.zeros((0, 4))),
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        """Appends the images of another metric's ``state()`` after the images seen so far.

        Merging the states of consecutive parts in their order gives bit for bit the ``result()`` of one pass over
        the whole set.  A state of other settings (classes, AP kind, IoU threshold, offsets) is refused.
        """
        s = checked_state(state, "voc", self._settings(), self._STATE_KEYS, migrate=migrated_settings)
        if len(s["gt_counts"]) != len(s["det_counts"]):
            raise MetricStateError(f"the VOC metric state is inconsistent: {len(s['gt_counts'])} images of GT "
                                   f"but {len(s['det_counts'])} of detections.")
        pieces = {key: split_by_counts(s[key], s["gt_counts" if key.startswith("gt") else "det_counts"], key)
                  for key in self._STATE_KEYS if not key.endswith("_counts")}
        for i in range(len(s["gt_counts"])):
            image_index = self.num_images
            self._gt_boxes.append(pieces["gt_boxes"][i].astype(np.float64))
            self._gt_labels.append(pieces["gt_labels"][i].astype(np.int64))
            self._gt_difficult.append(pieces["gt_difficult"][i].astype(bool))
            self._det_class.append(pieces["det_class"][i].astype(np.int64))
            self._det_score.append(pieces["det_score"][i].astype(np.float64))
            self._det_box.append(pieces["det_box"][i].astype(np.float64))
            self._det_image.append(np.full(len(pieces["det_class"][i]), image_index, np.int64))

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> VOCMetric:
        """A metric built with the settings a ``state()`` records, holding its images."""
        settings = migrated_settings(json.loads(str(np.asarray(state["settings"]))))
        metric = cls(settings["class_names"], settings["use_07_metric"], settings["iou_threshold"],
                     settings["offsets"])
        metric.merge(state)
        return metric

    def _match_class(self, label: int, gt_image: np.ndarray, gt_label: np.ndarray, gt_boxes: np.ndarray,
                     gt_difficult: np.ndarray, det_image: np.ndarray, det_class: np.ndarray,
                     det_score: np.ndarray, det_box: np.ndarray) -> dict[str, Any]:
        """Greedy matching of one class.  Returns sorted scores, per-detection tp/fp flags and npos."""
        in_class = gt_label == label
        c_image, c_boxes, c_difficult = gt_image[in_class], gt_boxes[in_class], gt_difficult[in_class]
        npos = int(np.sum(~c_difficult))
        mine = det_class == label + 1
        scores, images, boxes = det_score[mine], det_image[mine], det_box[mine]
        order = np.argsort(-scores) if self._reference else np.argsort(-scores, kind="stable")
        scores, images, boxes = scores[order], images[order], boxes[order]
        nd = scores.size
        # Pad each image's GT of this class to G rows so that all detections are matched in one vectorised pass.
        counts = np.bincount(c_image, minlength=self.num_images)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        g = int(counts.max()) if counts.size else 0
        ovmax = np.full(nd, -np.inf)
        jmax = np.zeros(nd, np.int64)
        if g > 0 and nd > 0:
            padded = np.zeros((self.num_images, g, 4))
            valid = np.zeros((self.num_images, g), bool)
            rank = np.arange(c_image.size) - starts[c_image]  # GT order kept as in the targets (argmax ties)
            padded[c_image, rank] = c_boxes
            valid[c_image, rank] = True
            step = max(1, _IOU_CHUNK_ELEMENTS // g)
            for lo in range(0, nd, step):
                sl = slice(lo, lo + step)
                iou = _iou_rows(boxes[sl], padded[images[sl]], valid[images[sl]])
                ovmax[sl] = np.max(iou, axis=1)  # NaN (degenerate boxes) propagates and never matches, as in the ref
                jmax[sl] = np.argmax(iou, axis=1)
        matched = ovmax > self.iou_threshold
        gt_index = starts[images] + jmax  # index into this class' GT arrays (only meaningful where matched)
        hits_difficult = np.zeros(nd, bool)
        hits_difficult[matched] = c_difficult[gt_index[matched]]
        candidates = np.nonzero(matched & ~hits_difficult)[0]
        tp = np.zeros(nd)
        fp = (~matched).astype(np.float64)
        _, first = np.unique(gt_index[candidates], return_index=True)  # first (highest-ranked) hit of each GT
        tp[candidates[first]] = 1.0
        fp[candidates] = 1.0 - tp[candidates]  # later hits of an already matched GT are duplicates
        return {"scores": scores, "tp": tp, "fp": fp, "npos": npos, "images": images}

    def _matched_classes(self) -> list[dict[str, Any]]:
        """``_match_class`` of every class over everything accumulated."""
        empty_f, empty_i = np.zeros((0,), np.float64), np.zeros((0,), np.int64)

        def cat(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
            return np.concatenate(parts) if parts else empty

        gt_image = np.repeat(np.arange(self.num_images), [len(b) for b in self._gt_labels]).astype(np.int64)
        arrays = (gt_image, cat(self._gt_labels, empty_i), cat(self._gt_boxes, np.zeros((0, 4))),
                  cat(self._gt_difficult, np.zeros((0,), bool)), cat(self._det_image, empty_i),
                  cat(self._det_class, empty_i), cat(self._det_score, empty_f), cat(self._det_box, np.zeros((0, 4))))
        return [self._match_class(label, *arrays) for label in range(self.num_classes)]

    def ranked_matches(self) -> RankedMatches:
        """The matching ``result()`` scores, per image, for bootstrap resampling (``evaluation.bootstrap``): per class
        the score-sorted detections' images and tp/fp flags, and each image's non-difficult GT count per class."""
        npos = np.zeros((self.num_images, self.num_classes))
        for image, (labels, difficult) in enumerate(zip(self._gt_labels, self._gt_difficult, strict=True)):
            np.add.at(npos[image], labels[~difficult], 1.0)
        classes = self._matched_classes()
        return RankedMatches(kind="voc07" if self.use_07_metric else "voc", num_images=self.num_images,
                             images=tuple(m["images"] for m in classes), tp=tuple(m["tp"] for m in classes),
                             fp=tuple(m["fp"] for m in classes), npos=npos)

    def result(self) -> dict[str, Any]:
        """Computes the metric over everything accumulated.

        Returns a dict with ``mAP`` (mean over classes that have non-difficult GT) and per-class dicts keyed by class
        name: ``AP``; ``precision`` and ``recall`` (cumulative curves over the score-sorted detections, for PR plots,
        as the reference's ``*_pr.pkl`` and ``metrics/PR.py``); ``tp`` and ``fp`` (per-detection 0/1 flags in
        sorted order, as the reference's ``save_tp_fp`` pickle); ``scores`` (sorted descending, as used after
        rounding; the confidence histograms' input); ``npos``.  ``num_images`` is the number of images seen.
        """
        out: dict[str, Any] = {key: {} for key in ("AP", "precision", "recall", "tp", "fp", "scores", "npos")}
        for name, m in zip(self.class_names, self._matched_classes(), strict=True):
            tp_cum, fp_cum = np.cumsum(m["tp"]), np.cumsum(m["fp"])
            with np.errstate(divide="ignore", invalid="ignore"):
                recall = tp_cum / float(m["npos"])
            precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
            if m["npos"] == 0:
                ap = float("nan")
            elif m["scores"].size == 0:
                ap = 0.0
            else:
                ap = compute_ap(recall, precision, self.use_07_metric)
            out["AP"][name] = ap
            out["precision"][name] = precision
            out["recall"][name] = recall
            out["tp"][name] = m["tp"]
            out["fp"][name] = m["fp"]
            out["scores"][name] = m["scores"]
            out["npos"][name] = m["npos"]
        aps = np.array(list(out["AP"].values()), np.float64)
        defined = aps[~np.isnan(aps)]
        out["mAP"] = float(defined.mean()) if defined.size else float("nan")
        out["num_images"] = self.num_images
        return out
