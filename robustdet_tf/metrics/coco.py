"""COCO box AP through pycocotools, as the reference scores COCO (docs/reference.md#coco).

The reference writes every detection as ``[x, y, w, h]`` in pixels (relative box × original width/height, no
clipping) with the official category id, and runs ``COCOeval(..., "bbox")`` against ``instances_val2017.json``.
The number the paper reports as COCO "mAP" is ``stats[1]``, AP at IoU 0.5; this module returns it as ``AP50``
next to all 12 standard stats and per-class APs.

Ground truth comes either from an annotation file (a path, a loaded ``pycocotools.coco.COCO`` or its dataset
dict) — then every GT batch must carry ``image_id`` with the file's ids — or, with ``annotations=None``, it is
built in memory from the accumulated target batches (boxes × original size, box area as the area, ``iscrowd``
from an optional ``is_crowd`` entry, image ids assigned in update order), so synthetic sets can be scored.  VOC's
``difficult`` flag has no COCO meaning and is not used here.

Category ids: network class ``c`` (1-based, 0 = background) maps to a category id through ``category_ids``
(a sequence whose entry ``c - 1`` is the id — the order of the reference's ``coco_labels.txt``, see
``coco_annotations.contiguous_category_ids`` — or a mapping ``{c: id}``), or through the identity by default.  The
reference's COCO model has 201 classes of which only 1..80 have ids; detections of classes without an id (or whose
id is not a category of the annotation file) are dropped and counted in ``num_dropped_detections`` instead of
crashing the evaluation as in the reference.  GT labels without an id are an input error and raise.

Only images passed to ``update`` are evaluated (``evaluate_all_images=False``), so a subset run is not charged
with the GT of images it never saw; on the full val2017 run this equals the reference, whose extra images carry
no annotations.  pycocotools prints a lot; that output is captured (``result()["summary"]``) unless ``verbose``.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from robustdet_tf.boxes import BOX_FORMAT, convert_format
from robustdet_tf.detections import DETECTION_BOX_FORMAT
from robustdet_tf.metrics.bootstrap import RankedMatches
from robustdet_tf.metrics.coco_annotations import load_coco, quiet
from robustdet_tf.metrics.per_image import unbatch_pair
from robustdet_tf.metrics.state import MetricStateError, checked, envelope

COCO_STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # order of COCOeval.stats for iouType "bbox"


class COCOMetric:
    """Accumulates detections (and, without an annotation file, GT) per batch; ``result()`` runs COCOeval.

    Args:
      annotations: json path / ``COCO`` / dataset dict, or ``None`` to build the GT from the target batches.
      category_ids: network class → category id: a sequence (entry ``c - 1`` for class ``c``) or a mapping
        ``{c: id}``; ``None`` = identity (for classes ``1..num_classes`` if ``num_classes`` is given).
      num_classes: number of object classes (without background) the identity mapping covers.
      class_names: names of network classes ``1..``; used for in-memory categories and per-class keys.
      default_image_size: (height, width) for GT batches without ``original_size`` (with an annotation file the
        file's image size is used first).
      evaluate_all_images: evaluate every image of the annotation file instead of only the images seen.
      verbose: let pycocotools print.
    """

    def __init__(
        self,
        annotations: str | os.PathLike | COCO | Mapping[str, Any] | None = None,
        category_ids: Sequence[int] | Mapping[int, int] | None = None,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        default_image_size: tuple[int, int] | None = None,
        evaluate_all_images: bool = False,
        verbose: bool = False,
    ) -> None:
        self.verbose = bool(verbose)
        self.evaluate_all_images = bool(evaluate_all_images)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.default_image_size = None if default_image_size is None else tuple(int(v) for v in default_image_size)
        self._coco_gt = None if annotations is None else load_coco(annotations, self.verbose)
        if category_ids is None:
            if num_classes is None and self.class_names is not None:
                num_classes = len(self.class_names)
            self._mapping: dict[int, int] | None = (
                None if num_classes is None else {c: c for c in range(1, int(num_classes) + 1)})
        elif isinstance(category_ids, Mapping):
            self._mapping = {int(c): int(i) for c, i in category_ids.items()}
        else:
            self._mapping = {c + 1: int(i) for c, i in enumerate(category_ids)}
        if self._mapping is not None and len(set(self._mapping.values())) != len(self._mapping):
            raise ValueError(f"category_ids maps two network classes to the same category id: {self._mapping}.")
        self.reset()

    def reset(self) -> None:
        """Forgets all accumulated detections, images and (in-memory) GT."""
        self._det_rows: list[np.ndarray] = []  # [n, 7]: image_id, x, y, w, h, score, category_id
        self._images: dict[int, tuple[int, int]] = {}  # image id -> (height, width), in update order
        self._gt_anns: list[dict[str, Any]] = []
        self._gt_category_ids: set[int] = set()
        self.num_dropped_detections = 0

    def category_id(self, network_class: int) -> int | None:
        """The category id of a network class, or ``None`` if it has none (its detections are dropped)."""
        c = int(network_class)
        if c < 1:
            return None
        cat = c if self._mapping is None else self._mapping.get(c)
        if cat is not None and self._coco_gt is not None and cat not in self._coco_gt.cats:
            return None
        return cat

    def network_class(self, category_id: int) -> int | None:
        """Inverse of ``category_id``: the network class predicting this category, or ``None``."""
        if self._mapping is None:
            return int(category_id) if int(category_id) >= 1 else None
        for c, cat in self._mapping.items():
            if cat == int(category_id):
                return c
        return None

    def _category_lookup(self, classes: np.ndarray) -> np.ndarray:
        """Vectorised ``category_id``: −1 where a class has no id."""
        uniq, inverse = np.unique(classes, return_inverse=True)
        cats = np.array([-1 if (cat := self.category_id(c)) is None else cat for c in uniq], np.int64)
        return cats[inverse].reshape(classes.shape)

    def _image_size(self, image_id: int, size: tuple[int, int] | None) -> tuple[int, int]:
        if size is not None:
            return size
        if self._coco_gt is not None:
            info = self._coco_gt.imgs[image_id]
            if "height" in info and "width" in info:
                return int(info["height"]), int(info["width"])
        if self.default_image_size is not None:
            return self.default_image_size
        raise ValueError("COCOMetric needs each image's size to turn relative boxes into pixels: put "
                         "'original_size' ([B, 2] height, width) in the ground truth batch or pass "
                         "default_image_size=(H, W).")

    def update(self, detections: Mapping[str, Any], ground_truth: Mapping[str, Any]) -> None:
        """Adds one batch: OD-API ``detections`` and the padded ``ground_truth`` of the same B images."""
        dets, gts = unbatch_pair(detections, ground_truth)
        crowd: list[np.ndarray | None] = [None] * len(gts)
        if "is_crowd" in ground_truth:
            raw_crowd, raw_labels = ground_truth["is_crowd"], ground_truth["labels"]
            flags = np.asarray(raw_crowd.numpy() if hasattr(raw_crowd, "numpy") else raw_crowd).astype(bool)
            labels = np.asarray(raw_labels.numpy() if hasattr(raw_labels, "numpy") else raw_labels)
            if flags.shape != labels.shape:
                raise ValueError(f"ground_truth['is_crowd'] must be [B, N] like 'labels' {labels.shape}; "
                                 f"got shape {flags.shape}.")
            # The same rows that unbatch_ground_truth keeps.
            crowd = [f[lab >= 0] for f, lab in zip(flags, labels, strict=True)]
        ids = self._image_ids(gts)
        sizes = [self._image_size(i, gt.size) for i, gt in zip(ids, gts, strict=True)]
        gt_cats = [self._category_lookup(gt.labels + 1) if self._coco_gt is None else None for gt in gts]
        for gt, cats in zip(gts, gt_cats, strict=True):
            if cats is None:  # GT comes from the annotation file; the batch's labels are not used
                continue
            if np.any(cats < 0):
                label = int(gt.labels[cats < 0][0])
                raise ValueError(f"ground_truth label {label} (network class {label + 1}) has no category id; "
                                 "extend category_ids / num_classes to cover every GT class.")
        for b, (image_id, (height, width), det, gt) in enumerate(zip(ids, sizes, dets, gts, strict=True)):
            self._images[image_id] = (height, width)
            keep = det.scores > 0
            cats = self._category_lookup(det.classes[keep])
            mapped = cats >= 0
            self.num_dropped_detections += int(np.sum(~mapped))
            if np.any(mapped):
                # float32 pixel corners as the reference's tensor scaling, then float64 width/height.
                corners = convert_format(det.boxes[keep][mapped].astype(np.float32), DETECTION_BOX_FORMAT, "xyxy",
                                         np.float32(height), np.float32(width)).astype(np.float64)
                x, y, w, h = convert_format(corners, "xyxy", "xywh").T
                rows = np.stack([np.full(x.shape, image_id, np.float64), x, y, w, h,
                                 det.scores[keep][mapped].astype(np.float64), cats[mapped].astype(np.float64)], 1)
                self._det_rows.append(rows)
            if self._coco_gt is None:
                self._add_gt(image_id, height, width, gt, gt_cats[b], crowd[b])

    def _image_ids(self, gts: Sequence[Any]) -> list[int]:
        if self._coco_gt is None:
            start = len(self._images) + 1  # ids from 1, in update order
            return list(range(start, start + len(gts)))
        ids = []
        for gt in gts:
            if gt.image_id is None:
                raise ValueError("With a COCO annotation file every ground_truth batch needs 'image_id' ([B] int, "
                                 "the file's image ids); without it pass annotations=None to build GT in memory.")
            try:
                image_id = int(gt.image_id)
            except (TypeError, ValueError):
                raise ValueError(f"ground_truth image_id {gt.image_id!r} is not an integer COCO image id.") from None
            if image_id not in self._coco_gt.imgs:
                raise ValueError(f"ground_truth image_id {image_id} is not an image of the COCO annotation file.")
            ids.append(image_id)
        return ids

    def _add_gt(self, image_id: int, height: int, width: int, gt: Any, cats: np.ndarray,
                crowd: np.ndarray | None) -> None:
        boxes = convert_format(gt.boxes.astype(np.float64), BOX_FORMAT, "xywh", height, width)
        for n, ((x, y, w, h), cat) in enumerate(zip(boxes, cats, strict=True)):
            self._gt_anns.append({
                "id": len(self._gt_anns) + 1,  # COCOeval treats id 0 as "unmatched": start at 1
                "image_id": image_id, "category_id": int(cat), "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": int(bool(crowd[n])) if crowd is not None else 0,
            })
            self._gt_category_ids.add(int(cat))

    # -- exact state export / merge (sharded evaluation) ----------------------------------------------------------
    _STATE_KEYS = ("image_ids", "image_sizes", "det_rows", "gt_anns", "gt_category_ids", "num_dropped_detections")

    def _settings(self) -> dict[str, Any]:
        gt = self._coco_gt
        return {"category_ids": None if self._mapping is None else sorted(self._mapping.items()),
                "class_names": None if self.class_names is None else list(self.class_names),
                "evaluate_all_images": self.evaluate_all_images,
                "annotations": None if gt is None else [len(gt.imgs), len(gt.anns), sorted(gt.cats)]}

    def state(self) -> dict[str, np.ndarray]:
        """Everything accumulated (images in update order, detection rows, in-memory GT) as NumPy arrays."""
        anns = [[a["image_id"], a["category_id"], *a["bbox"], a["area"], a["iscrowd"]] for a in self._gt_anns]
        return {
            **envelope("coco", self._settings()),
            "image_ids": np.array(list(self._images), np.int64),
            "image_sizes": np.array(list(self._images.values()), np.int64).reshape(-1, 2),
            "det_rows": np.concatenate(self._det_rows) if self._det_rows else np.zeros((0, 7)),
            "gt_anns": np.array(anns, np.float64).reshape(-1, 8),
            "gt_category_ids": np.array(sorted(self._gt_category_ids), np.int64),
            "num_dropped_detections": np.array(self.num_dropped_detections, np.int64),
        }

    def merge(self, state: Mapping[str, Any]) -> None:
        """Appends another metric's ``state()`` after everything seen so far, as if its batches came next.

        In-memory image ids (1, 2, … in update order) and annotation ids are renumbered to continue this metric's,
        so merging the states of consecutive parts in order gives bit for bit the ``result()`` of one pass.
        """
        s = checked(state, "coco", self._settings(), self._STATE_KEYS)
        ids, sizes, rows, anns = s["image_ids"], s["image_sizes"], s["det_rows"].copy(), s["gt_anns"]
        if sizes.shape != (len(ids), 2) or rows.ndim != 2 or rows.shape[1] != 7 or anns.shape[1:] != (8,):
            raise MetricStateError("the COCO metric state is inconsistent: image_sizes, det_rows or gt_anns have "
                                   "the wrong shape for its image_ids.")
        offset = 0
        if self._coco_gt is None:
            if not np.array_equal(ids, np.arange(1, len(ids) + 1)):
                raise MetricStateError("the COCO metric state's in-memory image ids are not 1..n in order.")
            offset = len(self._images)
            rows[:, 0] += offset
        for image_id, (height, width) in zip(ids.tolist(), sizes.tolist(), strict=True):
            self._images[image_id + offset] = (height, width)
        if rows.shape[0]:
            self._det_rows.append(rows)
        for row in anns:
            self._gt_anns.append({"id": len(self._gt_anns) + 1, "image_id": int(row[0]) + offset,
                                  "category_id": int(row[1]), "bbox": list(row[2:6]), "area": row[6],
                                  "iscrowd": int(row[7])})
        self._gt_category_ids.update(int(c) for c in s["gt_category_ids"])
        self.num_dropped_detections += int(s["num_dropped_detections"])

    def _category_name(self, cat: int) -> str:
        if self._coco_gt is not None:
            return str(self._coco_gt.cats[cat].get("name", cat))
        c = self.network_class(cat)
        if self.class_names is not None and c is not None and 1 <= c <= len(self.class_names):
            return self.class_names[c - 1]
        return str(cat)

    def _in_memory_gt(self, det_cats: set[int]) -> COCO:
        cats = set(self._gt_category_ids) | det_cats
        if self._mapping is not None:
            cats |= set(self._mapping.values())
        coco = COCO()
        coco.dataset = {
            "images": [{"id": i, "height": h, "width": w} for i, (h, w) in self._images.items()],
            "annotations": list(self._gt_anns),
            "categories": [{"id": c, "name": self._category_name(c)} for c in sorted(cats)],
        }
        with quiet(self.verbose):
            coco.createIndex()
        return coco

    def result(self) -> dict[str, Any]:
        """Runs COCOeval (bbox) on everything accumulated.

        Returns ``stats`` (the 12 COCOeval numbers, −1 where undefined), ``named_stats`` (``COCO_STAT_NAMES`` →
        value), ``AP50`` (= ``stats[1]``, the paper's COCO number), ``per_class_AP`` (IoU 0.5:0.95) and
        ``per_class_AP50`` keyed by category name (``nan`` for categories without GT), ``category_ids``,
        ``num_dropped_detections``, ``num_images`` and the captured ``summary`` text.
        """
        evaluator = self._evaluated("result()")
        with quiet(self.verbose):
            evaluator.accumulate()
            summary = io.StringIO()
            with contextlib.redirect_stdout(summary):
                evaluator.summarize()
            if self.verbose:
                print(summary.getvalue(), end="")
        stats = np.asarray(evaluator.stats, np.float64)
        precision = evaluator.eval["precision"]  # [T iou, R recall, K cat, A area, M maxDets]
        per_class_ap, per_class_ap50 = {}, {}
        for k, cat in enumerate(evaluator.params.catIds):
            name = self._category_name(cat)
            p_all = precision[:, :, k, 0, -1]  # area "all", maxDets 100
            p_50 = precision[0, :, k, 0, -1]
            per_class_ap[name] = float(np.mean(p_all[p_all > -1])) if np.any(p_all > -1) else float("nan")
            per_class_ap50[name] = float(np.mean(p_50[p_50 > -1])) if np.any(p_50 > -1) else float("nan")
        return {
            "stats": stats,
            "named_stats": dict(zip(COCO_STAT_NAMES, stats.tolist(), strict=True)),
            "AP50": float(stats[1]),
            "per_class_AP": per_class_ap,
            "per_class_AP50": per_class_ap50,
            "category_ids": list(evaluator.params.catIds),
            "num_dropped_detections": self.num_dropped_detections,
            "num_images": len(self._images),
            "summary": summary.getvalue(),
        }

    def _evaluated(self, caller: str) -> COCOeval:
        """A ``COCOeval`` (bbox) over everything accumulated, after its per-image ``evaluate()``."""
        if not self._images:
            raise ValueError(f"COCOMetric.{caller} called before any update(); there is nothing to evaluate.")
        rows = np.concatenate(self._det_rows) if self._det_rows else np.zeros((0, 7))
        det_cats = {int(c) for c in np.unique(rows[:, 6])}
        coco_gt = self._coco_gt if self._coco_gt is not None else self._in_memory_gt(det_cats)
        with quiet(self.verbose):
            coco_dt = self._load_results(coco_gt, rows)
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
            if not self.evaluate_all_images:
                evaluator.params.imgIds = sorted(self._images)
            evaluator.evaluate()
        return evaluator

    def ranked_matches(self) -> RankedMatches:
        """The per-image matching behind ``AP50`` (IoU 0.5, area "all", 100 detections per image), for bootstrap
        resampling (``evaluation.bootstrap``): per category the detections in ``accumulate``'s order (scores
        descending, merge sort over the images in id order) with their tp/fp flags (ignored detections are
        neither), and each image's non-ignored GT count.  Images are ``COCOeval``'s ``imgIds`` in that order."""
        evaluator = self._evaluated("ranked_matches()")
        params = evaluator.params
        num_images, num_areas, max_det = len(params.imgIds), len(params.areaRng), params.maxDets[-1]
        iou = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
        images, tps, fps = [], [], []
        npos = np.zeros((num_images, len(params.catIds)))
        for k in range(len(params.catIds)):
            entries = [(i, e) for i in range(num_images)
                       if (e := evaluator.evalImgs[(k * num_areas) * num_images + i]) is not None]
            scores = np.concatenate([np.asarray(e["dtScores"][:max_det], np.float64) for _, e in entries] or
                                    [np.zeros(0)])
            owner = np.concatenate([np.full(len(e["dtScores"][:max_det]), i, np.int64) for i, e in entries] or
                                   [np.zeros(0, np.int64)])
            matched = np.concatenate([e["dtMatches"][iou, :max_det] > 0 for _, e in entries] or [np.zeros(0, bool)])
            ignored = np.concatenate([e["dtIgnore"][iou, :max_det] > 0 for _, e in entries] or [np.zeros(0, bool)])
            for i, e in entries:
                npos[i, k] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            order = np.argsort(-scores, kind="mergesort")
            images.append(owner[order])
            tps.append((matched & ~ignored)[order].astype(np.float64))
            fps.append((~matched & ~ignored)[order].astype(np.float64))
        return RankedMatches(kind="coco101", num_images=num_images, images=tuple(images), tp=tuple(tps),
                             fp=tuple(fps), npos=npos)

    @staticmethod
    def _load_results(coco_gt: COCO, rows: np.ndarray) -> COCO:
        """``coco_gt.loadRes`` on the detection rows; an empty result set gets an empty ``COCO`` (loadRes fails)."""
        if rows.shape[0]:
            anns = [{"image_id": int(r[0]), "bbox": [float(v) for v in r[1:5]], "score": float(r[5]),
                     "category_id": int(r[6])} for r in rows]
            return coco_gt.loadRes(anns)
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                           "categories": list(coco_gt.dataset["categories"])}
        coco_dt.createIndex()
        return coco_dt
