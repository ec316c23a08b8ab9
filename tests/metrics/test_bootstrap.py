"""Paired bootstrap intervals over images: equal to recomputing the metric on every resampled set, around the point
estimate, narrower with more images, reproducible by seed, and paired (a model against itself differs by exactly 0)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from robustdet_tf.metrics.bootstrap import (
    BootstrapSpec,
    percentile_interval,
    resample_weights,
    resampled_map,
    table_intervals,
)
from robustdet_tf.metrics.coco import COCOMetric
from robustdet_tf.metrics.voc import VOCMetric

NAMES = ("a", "b", "c")
MAX_GT, MAX_DET = 3, 6


def image_record(i: int, skill: float) -> dict:
    """Image ``i`` of a hand-made set: 1–3 objects (some difficult), detections that hit an object with probability
    ``skill`` (slightly displaced, sometimes the wrong class) and otherwise land on the background.  Scores are
    continuous, so no two detections tie."""
    rng = np.random.default_rng(1000 + i)
    gts = []
    for _ in range(rng.integers(1, MAX_GT + 1)):
        x, y = rng.uniform(0.0, 0.6, 2)
        w, h = rng.uniform(0.15, 0.4, 2)
        gts.append((int(rng.integers(0, 3)), (x, y, x + w, y + h), bool(rng.uniform() < 0.15)))
    dets = []
    for _ in range(rng.integers(0, MAX_DET + 1)):
        if rng.uniform() < skill:
            label, box, _ = gts[rng.integers(0, len(gts))]
            box = tuple(np.asarray(box) + rng.normal(0.0, 0.02, 4))
            cls = label + 1 if rng.uniform() < 0.85 else int(rng.integers(1, 4))
        else:
            x, y = rng.uniform(0.0, 0.7, 2)
            box, cls = (x, y, x + 0.2, y + 0.2), int(rng.integers(1, 4))
        dets.append((cls, float(rng.uniform(0.05, 1.0)), box))
    return {"gt": gts, "det": dets}


def as_batch(records: list[dict]) -> tuple[dict, dict]:
    b = len(records)
    boxes, labels = np.zeros((b, MAX_GT, 4), np.float32), np.full((b, MAX_GT), -1, np.int32)
    difficult = np.zeros((b, MAX_GT), bool)
    det_boxes, det_scores = np.zeros((b, MAX_DET, 4), np.float32), np.zeros((b, MAX_DET), np.float32)
    det_classes, num = np.zeros((b, MAX_DET), np.float32), np.zeros((b,), np.int32)
    for i, record in enumerate(records):
        for j, (label, box, diff) in enumerate(record["gt"]):
            boxes[i, j], labels[i, j], difficult[i, j] = box, label, diff
        for j, (cls, score, (x1, y1, x2, y2)) in enumerate(record["det"]):
            det_boxes[i, j], det_scores[i, j], det_classes[i, j] = (y1, x1, y2, x2), score, cls
        num[i] = len(record["det"])
    detections = {"detection_boxes": det_boxes, "detection_scores": det_scores, "detection_classes": det_classes,
                  "num_detections": num}
    return detections, {"boxes": boxes, "labels": labels, "difficult": difficult,
                        "original_size": np.full((b, 2), 100, np.int32)}


METRICS = {
    "voc07": (lambda: VOCMetric(NAMES, use_07_metric=True, offsets="corrected"), "mAP"),
    "voc": (lambda: VOCMetric(NAMES, use_07_metric=False, offsets="corrected"), "mAP"),
    "coco": (lambda: COCOMetric(class_names=NAMES), "AP50"),
}


def scored(kind: str, records: list[dict], batch: int = 7):
    factory, key = METRICS[kind]
    metric = factory()
    for start in range(0, len(records), batch):
        metric.update(*as_batch(records[start:start + batch]))
    return metric, metric.result()[key]


@pytest.mark.parametrize("kind", sorted(METRICS))
def test_every_resample_equals_the_metric_recomputed_on_the_resampled_images(kind):
    records = [image_record(i, skill=0.7) for i in range(30)]
    metric, point = scored(kind, records)
    assert 0.2 < point < 0.95  # a case with real hits and misses
    matches = metric.ranked_matches()
    assert resampled_map(matches, np.ones((1, 30)))[0] == pytest.approx(point, abs=1e-12)

    weights = resample_weights(30, 40, seed=5)
    direct = []
    for row in weights:  # the resampled set itself: image i repeated row[i] times
        drawn = [records[i] for i in np.repeat(np.arange(30), row.astype(int))]
        direct.append(scored(kind, drawn)[1])
    np.testing.assert_allclose(resampled_map(matches, weights), direct, rtol=0, atol=1e-12)

    # The interval is the central 95 % of those recomputed values.
    spec = BootstrapSpec(resamples=40, seed=5)
    out = table_intervals({("m", "clean"): matches}, ["m"], ["clean"], spec)
    low, high = out["cells"]["m"]["clean"]
    assert (low, high) == pytest.approx(tuple(np.percentile(direct, [2.5, 97.5])), abs=1e-12)


def test_resample_weights_draw_every_image_set_with_replacement_by_seed():
    weights = resample_weights(50, 200, seed=3)
    assert weights.shape == (200, 50) and np.all(weights.sum(axis=1) == 50)
    assert np.all(weights >= 0) and np.all(weights == np.round(weights))
    assert abs(weights.mean() - 1.0) < 1e-12 and 0.5 < weights.var() < 1.5  # multinomial: variance ≈ 1 − 1/n
    np.testing.assert_array_equal(weights, resample_weights(50, 200, seed=3))
    assert not np.array_equal(weights, resample_weights(50, 200, seed=4))


def test_the_interval_holds_the_point_estimate_and_narrows_with_more_images():
    spec = BootstrapSpec(resamples=500, seed=0)
    widths = []
    for count in (20, 80, 320):
        metric, point = scored("voc07", [image_record(i, skill=0.6) for i in range(count)])
        low, high = table_intervals({("m", "clean"): metric.ranked_matches()}, ["m"], ["clean"], spec)["cells"]["m"][
            "clean"]
        assert low <= point <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.6 * widths[0]  # about 1/sqrt(n): 16× the images, a quarter of the width


def test_paired_differences_cancel_shared_images_and_a_model_minus_itself_is_exactly_zero():
    good = [image_record(i, skill=0.8) for i in range(60)]
    weak = [dict(r, det=r["det"][: len(r["det"]) // 2]) for r in good]  # the same images, half the detections
    m_good, p_good = scored("voc07", good)
    m_weak, p_weak = scored("voc07", weak)
    cells = {("good", "A"): m_good.ranked_matches(), ("weak", "A"): m_weak.ranked_matches(),
             ("copy", "A"): scored("voc07", good)[0].ranked_matches()}
    out = table_intervals(cells, ["good", "weak", "copy"], ["A"], BootstrapSpec(resamples=300, seed=1))
    diffs = {(d["model_a"], d["model_b"]): d for d in out["differences"]}
    assert set(diffs) == {("good", "weak"), ("good", "copy"), ("weak", "copy")}
    same = diffs[("good", "copy")]
    assert same["difference"] == 0.0 and same["ci_low"] == 0.0 and same["ci_high"] == 0.0
    gap = diffs[("good", "weak")]
    assert gap["difference"] == pytest.approx(p_good - p_weak)
    assert gap["ci_low"] <= gap["difference"] <= gap["ci_high"]
    # Paired: the difference's interval is narrower than the sum of the two cells' half widths would allow.
    (g_low, g_high), (w_low, w_high) = out["cells"]["good"]["A"], out["cells"]["weak"]["A"]
    assert gap["ci_high"] - gap["ci_low"] < (g_high - g_low) + (w_high - w_low)


def test_lowest_cell_interval_is_of_the_per_resample_minimum():
    a = scored("voc07", [image_record(i, skill=0.5) for i in range(40)])[0].ranked_matches()
    b = scored("voc07", [image_record(i, skill=0.9) for i in range(40)])[0].ranked_matches()
    spec = BootstrapSpec(resamples=200, seed=2)
    out = table_intervals({("m", "clean"): b, ("m", "X"): a, ("m", "Y"): b}, ["m"], ["clean", "X", "Y"], spec)
    weights = resample_weights(40, 200, seed=2)
    expected = percentile_interval(np.minimum(resampled_map(a, weights), resampled_map(b, weights)), 0.95)
    assert out["lowest"]["m"] == pytest.approx(expected)


def test_a_composite_column_is_the_per_resample_mean_of_its_cells_and_a_ratio_is_resampled_too():
    """The Corrupt column (mPC) averages its corruption cells in every resample; rPC divides by clean per resample;
    an unattacked column stays out of the lowest cell."""
    records = {s: [image_record(i, skill=s) for i in range(40)] for s in (0.4, 0.6, 0.9)}
    low, mid, high = (scored("voc07", records[s])[0].ranked_matches() for s in (0.4, 0.6, 0.9))
    spec = BootstrapSpec(resamples=200, seed=3)
    cells = {("m", "clean"): high, ("m", "X"): mid, ("m", "C:1"): low, ("m", "C:2"): mid}
    out = table_intervals(cells, ["m"], ["clean", "X", "C"], spec, {"C": ["C:1", "C:2"]}, ("clean", "C"),
                          {"r": ("C", "clean")})
    weights = resample_weights(40, 200, seed=3)
    mean = (resampled_map(low, weights) + resampled_map(mid, weights)) / 2
    assert out["cells"]["m"]["C"] == pytest.approx(percentile_interval(mean, 0.95))
    assert out["cells"]["m"]["C:1"] == pytest.approx(percentile_interval(resampled_map(low, weights), 0.95))
    point, r_low, r_high = out["ratios"]["m"]["r"]
    ones = np.ones((1, 40))
    want = (resampled_map(low, ones)[0] + resampled_map(mid, ones)[0]) / 2 / resampled_map(high, ones)[0]
    assert point == pytest.approx(want)
    assert (r_low, r_high) == pytest.approx(percentile_interval(mean / resampled_map(high, weights), 0.95))
    # C is lower than X but attacks nothing: the lowest cell is X's.
    assert out["lowest"]["m"] == pytest.approx(percentile_interval(resampled_map(mid, weights), 0.95))


def test_cells_of_different_image_sets_are_refused_and_bad_settings_named():
    a = scored("voc07", [image_record(i, 0.5) for i in range(10)])[0].ranked_matches()
    b = scored("voc07", [image_record(i, 0.5) for i in range(12)])[0].ranked_matches()
    with pytest.raises(ValueError, match="different numbers of images"):
        table_intervals({("m", "x"): a, ("n", "x"): b}, ["m", "n"], ["x"], BootstrapSpec())
    with pytest.raises(KeyError, match="eval.bootstrap has unknown key.*resample"):
        BootstrapSpec.from_mapping({"resample": 10})
    with pytest.raises(ValueError, match="eval.bootstrap.level"):
        BootstrapSpec(level=95)
    assert table_intervals({("m", "x"): a}, ["m"], ["x"], BootstrapSpec(resamples=0)) == {
        "cells": {}, "lowest": {}, "differences": [], "ratios": {}}
