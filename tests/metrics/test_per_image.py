"""Batched detections / padded targets → per-image NumPy records (shared by the VOC and COCO metrics)."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.metrics.per_image import (
    ImageDetections,
    ImageGroundTruth,
    unbatch_detections,
    unbatch_ground_truth,
    unbatch_pair,
)


def detections(batch=2, max_det=4, num=(3, 0), seed=0):
    rng = np.random.default_rng(seed)
    return {
        "detection_boxes": rng.uniform(0, 1, (batch, max_det, 4)).astype(np.float32),
        "detection_scores": rng.uniform(0, 1, (batch, max_det)).astype(np.float32),
        "detection_classes": rng.integers(1, 5, (batch, max_det)).astype(np.float32),
        "num_detections": np.asarray(num, np.float32),
    }


def ground_truth():
    labels = np.array([[2, -1, 0], [-1, -1, -1]], np.int32)
    return {"boxes": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 24, "labels": labels}


def test_detections_keep_the_first_num_rows_of_each_image():
    dets = detections(num=(3, 0))
    images = unbatch_detections(dets)
    assert len(images) == 2 and all(isinstance(im, ImageDetections) for im in images)
    np.testing.assert_array_equal(images[0].boxes, dets["detection_boxes"][0, :3])
    np.testing.assert_array_equal(images[0].scores, dets["detection_scores"][0, :3])
    np.testing.assert_array_equal(images[0].classes, dets["detection_classes"][0, :3].astype(np.int64))
    assert images[1].boxes.shape == (0, 4) and images[1].scores.shape == (0,) and images[1].classes.shape == (0,)


def test_float_classes_and_counts_are_rounded_and_tf_tensors_accepted():
    dets = detections(batch=1, max_det=3, num=(2.9999,))
    dets["detection_classes"][0] = [2.9999, 1.0001, 4.0]
    images = unbatch_detections({k: tf.constant(v) for k, v in dets.items()})
    assert images[0].classes.tolist() == [3, 1, 4] and images[0].classes.dtype == np.int64
    assert len(images[0].scores) == 3 and images[0].boxes.dtype == np.float32


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda d: d.pop("detection_scores"), KeyError, r"detections has no 'detection_scores' entry .*contract"),
        (lambda d: d.update(detection_boxes=d["detection_boxes"][..., :3]), ValueError, r"must be \[B, M, 4\]"),
        (lambda d: d.update(detection_scores=d["detection_scores"][:, :2]), ValueError,
         r"detection_scores'\] must be \[B, M\] = \(2, 4\)"),
        (lambda d: d.update(detection_classes=d["detection_classes"][:1]), ValueError, "detection_classes"),
        (lambda d: d.update(num_detections=np.array([1.0, 2.0, 3.0])), ValueError, r"must be \[B\] = \[2\]"),
        (lambda d: d.update(num_detections=np.array([5.0, 0.0])), ValueError, r"must lie in \[0, 4\]; got \[5, 0\]"),
        (lambda d: d.update(num_detections=np.array([-1.0, 0.0])), ValueError, r"must lie in \[0, 4\]"),
    ],
)
def test_wrong_detection_layouts_are_refused(change, error, message):
    dets = detections()
    change(dets)
    with pytest.raises(error, match=message):
        unbatch_detections(dets)


def test_ground_truth_drops_padding_wherever_it_is_and_defaults_the_extras():
    gt = ground_truth()
    images = unbatch_ground_truth(gt)
    assert all(isinstance(im, ImageGroundTruth) for im in images)
    first, second = images
    assert first.labels.tolist() == [2, 0]  # the padding row between two objects is dropped too
    np.testing.assert_array_equal(first.boxes, gt["boxes"][0, [0, 2]])
    assert first.difficult.tolist() == [False, False] and first.size is None and first.image_id is None
    assert second.boxes.shape == (0, 4) and second.labels.shape == (0,)
    with pytest.raises(KeyError, match="ground_truth has no 'labels' entry"):
        unbatch_ground_truth({"boxes": gt["boxes"]})


def test_ground_truth_difficult_size_and_ids():
    gt = {**ground_truth(), "difficult": np.array([[True, False, False], [False] * 3]),
          "original_size": np.array([[375, 500], [480, 640]], np.int32), "image_id": np.array([b"000005", b"x"])}
    first, second = unbatch_ground_truth(gt)
    assert first.difficult.tolist() == [True, False]
    assert (first.size, second.size) == ((375, 500), (480, 640)) and type(first.size[0]) is int
    assert (first.image_id, second.image_id) == ("000005", "x")  # bytes decoded
    ids = unbatch_ground_truth({**ground_truth(), "image_id": tf.constant([[7], [9]], tf.int64)})
    assert [im.image_id for im in ids] == [7, 9] and type(ids[0].image_id) is int


@pytest.mark.parametrize(
    "extra, error, message",
    [
        ({"boxes": np.zeros((2, 3), np.float32)}, ValueError, r"ground_truth\['boxes'\] must be \[B, N, 4\]"),
        ({"labels": np.zeros((2, 2), np.int32)}, ValueError, r"labels'\] must be \[B, N\] = \(2, 3\)"),
        ({"difficult": np.zeros((2, 2), bool)}, ValueError, r"difficult'\] must be \[B, N\]"),
        ({"original_size": np.ones((2, 3), np.int32)}, ValueError, r"original_size'\] must be \[B, 2\]"),
        ({"original_size": np.array([[10, 0], [5, 5]])}, ValueError, "must be positive"),
        ({"image_id": np.array([1, 2, 3])}, ValueError, r"image_id'\] must be \[B\] = \[2\]"),
    ],
)
def test_wrong_ground_truth_layouts_are_refused(extra, error, message):
    with pytest.raises(error, match=message):
        unbatch_ground_truth({**ground_truth(), **extra})


def test_pair_unbatches_both_halves_of_the_same_images():
    dets, gts = unbatch_pair(detections(num=(1, 2)), ground_truth())
    assert [len(d.scores) for d in dets] == [1, 2] and [g.labels.tolist() for g in gts] == [[2, 0], []]
    with pytest.raises(ValueError, match="detections hold 3 images but ground_truth holds 2"):
        unbatch_pair(detections(batch=3, num=(1, 1, 1)), ground_truth())
