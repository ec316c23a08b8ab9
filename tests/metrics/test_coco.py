"""COCO AP through pycocotools on hand-built cases (values worked out by hand in each test)."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from robustdet_tf.metrics.coco import COCO_STAT_NAMES, COCOMetric
from robustdet_tf.metrics.coco_annotations import contiguous_category_ids


def make_batch(images, size=None, image_ids=None):
    """``images``: dicts with ``gt`` = [(label, (x1, y1, x2, y2) rel)] and ``det`` = [(class, score, rel xyxy)];
    one padding row is always added to both so that padding handling is exercised."""
    b = len(images)
    n = max(len(im["gt"]) for im in images) + 1
    m = max(len(im["det"]) for im in images) + 1
    boxes = np.full((b, n, 4), 0.25, np.float32)
    labels = np.full((b, n), -1, np.int32)
    det_boxes = np.tile(np.array([0.1, 0.1, 0.6, 0.6], np.float32), (b, m, 1))  # padding rows look valid
    det_scores = np.full((b, m), 0.99, np.float32)
    det_classes = np.ones((b, m), np.float32)
    num = np.zeros((b,), np.int32)
    for i, im in enumerate(images):
        for j, (label, box) in enumerate(im["gt"]):
            boxes[i, j], labels[i, j] = box, label
        for j, (cls, score, (x1, y1, x2, y2)) in enumerate(im["det"]):
            det_boxes[i, j] = (y1, x1, y2, x2)
            det_scores[i, j], det_classes[i, j] = score, cls
        num[i] = len(im["det"])
    gt = {"boxes": boxes, "labels": labels}
    if size is not None:
        gt["original_size"] = np.tile(np.array(size, np.int32), (b, 1))
    if image_ids is not None:
        gt["image_id"] = np.array(image_ids, np.int64)
    dets = {"detection_boxes": det_boxes, "detection_scores": det_scores, "detection_classes": det_classes,
            "num_detections": num}
    return dets, gt


BOX1 = (0.1, 0.2, 0.5, 0.6)  # 40 x 40 px on a 100 x 100 image: a "medium" object
BOX2 = (0.5, 0.5, 0.9, 0.8)


def test_perfect_detections_give_ap_one(capsys):
    images = [{"gt": [(0, BOX1), (1, BOX2)], "det": [(1, 0.9, BOX1), (2, 0.8, BOX2)]},
              {"gt": [(0, BOX2)], "det": [(1, 0.7, BOX2)]}]
    metric = COCOMetric(class_names=("cat", "dog"))
    metric.update(*make_batch(images, size=(100, 100)))
    res = metric.result()
    assert capsys.readouterr().out == ""  # pycocotools' prints are captured...
    assert "Average Precision" in res["summary"]  # ...and kept
    assert res["stats"].shape == (12,)
    assert res["named_stats"]["AP"] == pytest.approx(1.0)
    assert res["AP50"] == pytest.approx(1.0) == res["stats"][1]
    assert res["named_stats"]["APm"] == pytest.approx(1.0)
    assert res["named_stats"]["APs"] == -1.0  # no small objects: undefined, pycocotools' -1
    assert res["per_class_AP"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert res["num_images"] == 2 and res["num_dropped_detections"] == 0
    assert list(res["named_stats"]) == list(COCO_STAT_NAMES)


def test_shifted_box_lowers_ap():
    # GT 40x40 px at x 10..50, y 20..60 (100 x 100 image); the detection is shifted right by 8 px:
    # IoU = 32·40 / (2·1600 − 32·40) = 1280 / 1920 = 2/3.  COCO counts a match at IoU ≥ t for
    # t ∈ {0.50, 0.55, ..., 0.95}: 4 of the 10 thresholds (0.50, 0.55, 0.60, 0.65), each with precision 1 at
    # recall 1, the others 0 → AP = 0.4, AP50 = 1, AP75 = 0, AR100 = 0.4.
    shifted = (0.18, 0.2, 0.58, 0.6)
    metric = COCOMetric(num_classes=1)
    metric.update(*make_batch([{"gt": [(0, BOX1)], "det": [(1, 0.9, shifted)]}], size=(100, 100)))
    res = metric.result()
    assert res["named_stats"]["AP"] == pytest.approx(0.4)
    assert res["AP50"] == pytest.approx(1.0)
    assert res["named_stats"]["AP75"] == pytest.approx(0.0)
    assert res["named_stats"]["AR100"] == pytest.approx(0.4)
    assert res["per_class_AP50"]["1"] == pytest.approx(1.0)


def test_no_detections_does_not_crash():
    metric = COCOMetric(num_classes=2)
    metric.update(*make_batch([{"gt": [(0, BOX1)], "det": []}], size=(100, 100)))
    res = metric.result()
    assert res["named_stats"]["AP"] == 0.0 and res["AP50"] == 0.0


CATEGORIES = [{"id": 7, "name": "cat"}, {"id": 12, "name": "dog"}, {"id": 42, "name": "cow"}]


def annotation_dict():
    # Two images with ids 101 and 202 (sizes differ, so the file's sizes must be used); pixel xywh boxes.
    return {
        "images": [{"id": 101, "height": 100, "width": 200}, {"id": 202, "height": 50, "width": 100}],
        "annotations": [
            {"id": 1, "image_id": 101, "category_id": 12, "bbox": [20, 20, 80, 40], "area": 3200, "iscrowd": 0},
            {"id": 2, "image_id": 202, "category_id": 42, "bbox": [10, 5, 50, 25], "area": 1250, "iscrowd": 0},
        ],
        "categories": CATEGORIES,
    }


def annotated_images(extra_dets=()):
    # Same boxes in relative xyxy; labels are contiguous 0-based (dog = 1, cow = 2).
    return [{"gt": [(1, (0.1, 0.2, 0.5, 0.6))], "det": [(2, 0.9, (0.1, 0.2, 0.5, 0.6)), *extra_dets]},
            {"gt": [(2, (0.1, 0.1, 0.6, 0.6))], "det": [(3, 0.8, (0.1, 0.1, 0.6, 0.6))]}]


def test_category_mapping_round_trip(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(annotation_dict()))
    ids = contiguous_category_ids(path)
    assert ids == [7, 12, 42]
    metric = COCOMetric(annotations=path, category_ids=ids)
    for c, cat in enumerate(ids, start=1):
        assert metric.category_id(c) == cat and metric.network_class(cat) == c
    assert metric.category_id(4) is None and metric.category_id(0) is None
    # A class-4 detection has no category (like COCO's classes 81..200): dropped and counted, not a crash.
    metric.update(*make_batch(annotated_images(extra_dets=[(4, 0.95, (0.0, 0.0, 0.3, 0.3))]), image_ids=[101, 202]))
    res = metric.result()
    assert res["num_dropped_detections"] == 1
    assert res["category_ids"] == [7, 12, 42]
    assert res["named_stats"]["AP"] == pytest.approx(1.0)
    assert res["per_class_AP"]["dog"] == pytest.approx(1.0) and res["per_class_AP"]["cow"] == pytest.approx(1.0)
    assert np.isnan(res["per_class_AP"]["cat"])  # no GT
    # The identity mapping sends class 2 to id 2 and class 3 to id 3, which the file does not know: all dropped.
    identity = COCOMetric(annotations=annotation_dict())
    identity.update(*make_batch(annotated_images(), image_ids=[101, 202]))
    res = identity.result()
    assert res["num_dropped_detections"] == 2 and res["named_stats"]["AP"] == 0.0


def test_only_seen_images_are_evaluated_unless_asked():
    one_image = annotated_images()[:1]
    seen = COCOMetric(annotations=annotation_dict(), category_ids=[7, 12, 42])
    seen.update(*make_batch(one_image, image_ids=[101]))
    assert seen.result()["named_stats"]["AP"] == pytest.approx(1.0)
    everything = COCOMetric(annotations=annotation_dict(), category_ids=[7, 12, 42], evaluate_all_images=True)
    everything.update(*make_batch(one_image, image_ids=[101]))
    # Image 202's cow is never detected: cow AP 0, dog AP 1 → mean 0.5.
    assert everything.result()["named_stats"]["AP"] == pytest.approx(0.5)


def test_identity_mapping_drops_classes_beyond_num_classes():
    images = [{"gt": [(0, BOX1)], "det": [(1, 0.9, BOX1), (81, 0.5, BOX2), (200, 0.4, BOX2)]}]
    metric = COCOMetric(num_classes=80)
    metric.update(*make_batch(images, size=(100, 100)))
    res = metric.result()
    assert res["num_dropped_detections"] == 2
    assert res["per_class_AP"]["1"] == pytest.approx(1.0)


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        COCOMetric(annotations=tmp_path / "missing.json")
    metric = COCOMetric(annotations=annotation_dict(), category_ids=[7, 12, 42])
    with pytest.raises(ValueError, match="image_id"):
        metric.update(*make_batch(annotated_images()))
    with pytest.raises(ValueError, match="303"):
        metric.update(*make_batch(annotated_images(), image_ids=[101, 303]))
    in_memory = COCOMetric(num_classes=1)
    with pytest.raises(ValueError, match="original_size"):
        in_memory.update(*make_batch([{"gt": [(0, BOX1)], "det": []}]))
    with pytest.raises(ValueError, match="no category id"):
        in_memory.update(*make_batch([{"gt": [(3, BOX1)], "det": []}], size=(10, 10)))
    with pytest.raises(ValueError, match="before any update"):
        in_memory.result()


def test_crowd_ground_truth_is_ignored_and_verbose_prints(capsys):
    # BOX1 is detected; BOX2 is never detected.  As a normal GT it halves the recall (101-point AP: precision 1
    # on recall points 0..0.5 → 51/101); flagged is_crowd it is ignored, so AP stays 1.
    images = [{"gt": [(0, BOX1), (0, BOX2)], "det": [(1, 0.9, BOX1)]}]
    dets, gt = make_batch(images, size=(100, 100))
    plain = COCOMetric(num_classes=1)
    plain.update(dets, gt)
    assert plain.result()["named_stats"]["AP"] == pytest.approx(51 / 101)
    gt["is_crowd"] = np.array([[False, True, True]])  # last row is padding
    crowd = COCOMetric(num_classes=1, verbose=True)
    crowd.update(dets, gt)
    assert crowd.result()["named_stats"]["AP"] == pytest.approx(1.0)
    assert "Average Precision" in capsys.readouterr().out
