"""Metric states: exported per part, saved, merged in order — the very result of one pass (VOC and COCO)."""

import numpy as np
import pytest

from robustdet_tf.metrics.coco import COCOMetric
from robustdet_tf.metrics.state import MetricStateError
from robustdet_tf.metrics.voc import VOCMetric

CLASSES = ("a", "b", "c")


def random_batches(num_batches=6, batch=3, seed=0):
    """Detections near the GT (plus noise boxes) with scores on a coarse grid, so ties are frequent."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        n_gt, n_det = 4, 12
        corners = rng.uniform(0, 0.5, (batch, n_gt, 2))
        gt_boxes = np.concatenate([corners, corners + rng.uniform(0.1, 0.5, (batch, n_gt, 2))], -1)
        labels = rng.integers(-1, 3, (batch, n_gt)).astype(np.int32)
        pick = rng.integers(0, n_gt, (batch, n_det))
        xyxy = np.take_along_axis(gt_boxes, pick[..., None], 1) + rng.normal(0, 0.04, (batch, n_det, 4))
        det_boxes = xyxy[..., [1, 0, 3, 2]].astype(np.float32)  # detections are yxyx
        scores = np.round(rng.uniform(0, 1, (batch, n_det)), 1).astype(np.float32)
        detections = {"detection_boxes": det_boxes, "detection_scores": scores,
                      "detection_classes": rng.integers(1, 4, (batch, n_det)).astype(np.float32),
                      "num_detections": rng.integers(0, n_det + 1, batch).astype(np.float32)}
        targets = {"boxes": gt_boxes.astype(np.float32), "labels": labels,
                   "difficult": rng.uniform(size=(batch, n_gt)) < 0.15,
                   "original_size": rng.integers(200, 500, (batch, 2)).astype(np.int32)}
        out.append((detections, targets))
    return out


def saved_and_loaded(state, path):
    np.savez(path, **state)
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def assert_same_result(got, want):
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            assert got[key].keys() == value.keys()
            for name, v in value.items():
                np.testing.assert_array_equal(np.asarray(got[key][name]), np.asarray(v), err_msg=f"{key}/{name}")
        elif key != "summary":
            np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


@pytest.mark.parametrize("offsets", ["reference", "corrected"])
def test_voc_states_of_parts_merge_into_the_one_pass_result(offsets, tmp_path):
    batches = random_batches()
    single = VOCMetric(CLASSES, offsets=offsets)
    for dets, gts in batches:
        single.update(dets, gts)
    want = single.result()
    assert 0.0 < want["mAP"] < 1.0 and want["num_images"] == 18

    merged = VOCMetric(CLASSES, offsets=offsets)
    for i, part in enumerate((batches[:1], batches[1:1], batches[1:4], batches[4:])):  # an empty part too
        metric = VOCMetric(CLASSES, offsets=offsets)
        for dets, gts in part:
            metric.update(dets, gts)
        merged.merge(saved_and_loaded(metric.state(), tmp_path / f"part{i}.npz"))
    assert_same_result(merged.result(), want)
    assert merged.result()["mAP"] == want["mAP"]
    assert_same_result(VOCMetric.from_state(single.state()).result(), want)


def test_voc_refuses_a_state_of_other_settings_or_kind():
    dets, gts = random_batches(1)[0]
    eleven = VOCMetric(CLASSES, use_07_metric=True)
    eleven.update(dets, gts)
    with pytest.raises(MetricStateError, match=r"other settings \(use_07_metric"):
        VOCMetric(CLASSES, use_07_metric=False).merge(eleven.state())
    with pytest.raises(MetricStateError, match="lacks"):
        VOCMetric(CLASSES).merge({"metric": np.array("voc"), "settings": eleven.state()["settings"]})
    coco = COCOMetric(class_names=CLASSES)
    coco.update(dets, gts)
    with pytest.raises(MetricStateError, match="a coco metric state cannot be merged into a voc metric"):
        VOCMetric(CLASSES).merge(coco.state())
    broken = eleven.state()
    broken["det_counts"] = broken["det_counts"] + 1
    before = VOCMetric(CLASSES)
    with pytest.raises(MetricStateError, match="inconsistent"):
        before.merge(broken)
    assert before.num_images == 0  # nothing half-merged


@pytest.mark.parametrize("with_file", [False, True])
def test_coco_states_of_parts_merge_into_the_one_pass_result(with_file, tmp_path):
    batches = random_batches(seed=1)
    annotations = None
    if with_file:  # the same GT as an annotation dict with its own (non-consecutive) image ids
        builder = COCOMetric(class_names=CLASSES)
        for dets, gts in batches:
            builder.update(dets, gts)
        built = builder._in_memory_gt(set())
        annotations = {"images": [dict(im, id=10 * im["id"]) for im in built.dataset["images"]],
                       "annotations": [dict(a, image_id=10 * a["image_id"]) for a in built.dataset["annotations"]],
                       "categories": built.dataset["categories"]}
        ids = iter(range(10, 10 * 19, 10))
        batches = [(d, {**g, "image_id": np.array([next(ids) for _ in range(3)])}) for d, g in batches]

    def fresh():
        return COCOMetric(annotations, class_names=CLASSES, category_ids=[7, 3, 5] if not with_file else None)

    single = fresh()
    for dets, gts in batches:
        single.update(dets, gts)
    want = single.result()
    assert 0.0 < want["AP50"] < 1.0 and want["num_images"] == 18

    merged = fresh()
    for i, part in enumerate((batches[:2], batches[2:3], batches[3:])):
        metric = fresh()
        for dets, gts in part:
            metric.update(dets, gts)
        merged.merge(saved_and_loaded(metric.state(), tmp_path / f"part{i}.npz"))
    got = merged.result()
    assert_same_result(got, want)
    assert got["AP50"] == want["AP50"] and got["summary"] == want["summary"]


def test_coco_refuses_a_state_of_other_category_ids():
    dets, gts = random_batches(1)[0]
    metric = COCOMetric(class_names=CLASSES, category_ids=[7, 3, 5])
    metric.update(dets, gts)
    with pytest.raises(MetricStateError, match=r"other settings \(category_ids"):
        COCOMetric(class_names=CLASSES).merge(metric.state())
