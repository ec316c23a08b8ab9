"""``evaluate_detections``: a model (optionally attacked) over evaluation batches into a metric, batched, in one
``tf.function`` per batch; the attack sees targets without difficult objects; ``make_metric`` picks the metric.

The model here is an oracle whose detections can be predicted: image ``i`` (all pixels = ``i``) gets one detection,
the ground-truth box of image ``i``.  An attack that adds 1 to every pixel makes it report image ``i + 1``'s box.
"""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.evaluation.evaluate import detection_step, evaluate_detections, make_metric
from robustdet_tf.metrics.coco import COCOMetric
from robustdet_tf.metrics.voc import VOCMetric

NAMES = ("a", "b", "c")
NUM = 6
# Image i: one object of class i % 3 in a distinct, non-overlapping cell (rel_xyxy), plus a difficult one.
BOXES = np.array([[[0.1 * i, 0.1, 0.1 * i + 0.08, 0.3], [0.0, 0.7, 0.2, 0.9]] for i in range(NUM)], np.float32)
LABELS = np.array([[i % 3, (i + 1) % 3] for i in range(NUM)], np.int32)
DIFFICULT = np.tile([False, True], (NUM, 1))


class Oracle:
    """``detect`` reads the image index from its pixels and returns that image's first ground-truth object."""

    def __init__(self):
        self.table = tf.constant(np.concatenate([BOXES[:, 0], np.zeros((8, 4), np.float32)]))
        self.classes = tf.constant(np.concatenate([LABELS[:, 0] + 1, np.ones(8, np.int32)]), tf.float32)

    def detect(self, images):
        index = tf.cast(tf.round(images[:, 0, 0, 0]), tf.int32)
        xyxy = tf.gather(self.table, index)
        batch = tf.shape(images)[0]
        return {
            "detection_boxes": tf.stack([xyxy[:, 1], xyxy[:, 0], xyxy[:, 3], xyxy[:, 2]], -1)[:, None],
            "detection_scores": tf.ones([batch, 1]),
            "detection_classes": tf.gather(self.classes, index)[:, None],
            "num_detections": tf.ones([batch], tf.int32),
        }


def batches(batch_size=2):
    images = np.broadcast_to(np.arange(NUM, dtype=np.float32)[:, None, None, None], (NUM, 4, 4, 3)).copy()
    targets = {"boxes": BOXES, "labels": LABELS, "difficult": DIFFICULT}
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(batch_size)


def shift(model, images, targets):
    assert set(targets) == {"boxes", "labels"}  # checked while tracing: the attack gets boxes and labels only
    return images + 1.0


def test_make_metric_kinds():
    voc07, voc = make_metric("voc07", NAMES), make_metric("voc", NAMES, offsets="corrected")
    assert isinstance(voc07, VOCMetric) and voc07.use_07_metric and voc07.offsets == "reference"
    assert isinstance(voc, VOCMetric) and not voc.use_07_metric and voc.offsets == "corrected"
    coco = make_metric("coco", NAMES)
    assert isinstance(coco, COCOMetric) and coco.class_names == NAMES
    with pytest.raises(ValueError, match="unknown metric 'map'; use 'voc07', 'voc' or 'coco'"):
        make_metric("map", NAMES)


def test_clean_detections_are_accumulated_over_every_batch():
    seen = []
    result = evaluate_detections(Oracle(), batches(), make_metric("voc", NAMES, offsets="corrected"),
                                 on_batch=lambda clean, adv, dets: seen.append((clean, adv, dets)))
    assert result["mAP"] == pytest.approx(1.0) and result["num_images"] == NUM
    assert [int(d["num_detections"].shape[0]) for _, _, d in seen] == [2, 2, 2]
    for clean, adv, _ in seen:
        np.testing.assert_array_equal(adv.numpy(), clean.numpy())  # no attack: the images themselves


def test_the_attack_runs_on_every_batch_and_lowers_the_metric():
    seen = []
    result = evaluate_detections(Oracle(), batches(), make_metric("voc", NAMES, offsets="corrected"),
                                 attack=shift, on_batch=lambda clean, adv, dets: seen.append((clean, adv)))
    assert result["mAP"] == pytest.approx(0.0)  # every detection is the next image's box: all false positives
    for clean, adv in seen:
        np.testing.assert_array_equal(adv.numpy(), clean.numpy() + 1.0)


def test_max_batches_stops_early():
    result = evaluate_detections(Oracle(), batches(), make_metric("voc", NAMES, offsets="corrected"),
                                 max_batches=2)
    assert result["num_images"] == 4


def test_the_attack_sees_difficult_objects_as_padding():
    def count_objects(model, images, targets):
        return images + tf.cast(tf.reduce_sum(tf.cast(targets["labels"] >= 0, tf.int32)), tf.float32)

    step = detection_step(Oracle(), count_objects)
    images, targets = next(iter(batches(3)))
    _, adv = step(images, targets)
    np.testing.assert_array_equal(adv.numpy() - images.numpy(), 3.0)  # 3 images × 1 non-difficult object
    _, adv = step(images, {"boxes": targets["boxes"], "labels": targets["labels"]})
    np.testing.assert_array_equal(adv.numpy() - images.numpy(), 6.0)  # without "difficult" every object counts
    detections, adv = detection_step(Oracle())(images, targets)
    np.testing.assert_array_equal(adv.numpy(), images.numpy())
    np.testing.assert_array_equal(detections["detection_classes"].numpy()[:, 0], LABELS[:3, 0] + 1)


def test_one_trace_per_batch_shape_and_many_cells_warn_of_no_retracing(caplog):
    """A cell's step is traced once per batch shape (the full batches, the smaller last one) and then only called; a
    table's many cells, each traced once, are not reported as TensorFlow's repeated retracing."""
    traces = []

    def counted(model, images, targets):
        traces.append(images.shape[0])  # runs only while tracing
        return images + 1.0

    step = detection_step(Oracle(), counted)
    for _ in range(2):
        for images, targets in batches(4):  # batches of 4 and 2
            _, adv = step(images, targets)
            np.testing.assert_array_equal(adv.numpy(), images.numpy() + 1.0)
    assert traces == [4, 2]  # one trace per batch shape, static shapes, none on the second pass
    with caplog.at_level("WARNING"):
        for _ in range(12):  # twelve cells of a table
            cell = detection_step(Oracle(), shift)
            for images, targets in batches(3):
                cell(images, targets)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]
