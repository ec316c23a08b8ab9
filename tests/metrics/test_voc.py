"""VOC mAP on hand-built cases whose AP values are worked out by hand in each test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from robustdet_tf.metrics.voc import VOC_CLASSES, VOCMetric, compute_ap

NAMES = ("a", "b", "c")


def make_batch(images, max_gt=None, max_det=None, size=None):
    """Builds padded GT and OD-API detection dicts.

    ``images``: list of dicts with ``gt`` = [(label, (x1, y1, x2, y2) rel, difficult)] and ``det`` =
    [(network class, score, (x1, y1, x2, y2) rel)].  Extra ``gt_pad`` / ``det_pad`` rows go *after* the valid ones:
    they are padding, so the metric must never read them (they carry values that would change the result).
    """
    b = len(images)
    n = max_gt or max(len(im["gt"]) + len(im.get("gt_pad", [])) for im in images)
    m = max_det or max(len(im["det"]) + len(im.get("det_pad", [])) for im in images)
    boxes = np.zeros((b, n, 4), np.float32)
    labels = np.full((b, n), -1, np.int32)
    difficult = np.zeros((b, n), bool)
    det_boxes = np.zeros((b, m, 4), np.float32)
    det_scores = np.zeros((b, m), np.float32)
    det_classes = np.zeros((b, m), np.float32)
    num = np.zeros((b,), np.int32)
    for i, im in enumerate(images):
        for j, (label, box, diff) in enumerate(im["gt"]):
            boxes[i, j], labels[i, j], difficult[i, j] = box, label, diff
        for j, box in enumerate(im.get("gt_pad", []), start=len(im["gt"])):
            boxes[i, j] = box  # label stays -1
        rows = im["det"] + im.get("det_pad", [])
        for j, (cls, score, (x1, y1, x2, y2)) in enumerate(rows):
            det_boxes[i, j] = (y1, x1, y2, x2)  # OD API order
            det_scores[i, j], det_classes[i, j] = score, cls
        num[i] = len(im["det"])
    gt = {"boxes": boxes, "labels": labels, "difficult": difficult}
    if size is not None:
        gt["original_size"] = np.tile(np.array(size, np.int32), (b, 1))
    dets = {"detection_boxes": det_boxes, "detection_scores": det_scores, "detection_classes": det_classes,
            "num_detections": num}
    return dets, gt


A0, B0, PAD0 = (0.1, 0.1, 0.4, 0.4), (0.5, 0.5, 0.9, 0.9), (0.6, 0.1, 0.9, 0.4)
A1 = (0.2, 0.2, 0.6, 0.6)

# AP of the curve rec = [.5, .5, 1(, 1)], prec = [1, .5, 2/3(, .5)], used by several tests:
# 11-point: thresholds 0..0.5 (6 of them) see max precision 1, thresholds 0.6..1.0 (5) see 2/3 → (6 + 5·2/3)/11.
# all-point: envelope 1 up to recall .5, 2/3 from .5 to 1 → .5·1 + .5·2/3.
AP07_DUP = (6 + 5 * 2 / 3) / 11
AP_ALL_DUP = 0.5 + 0.5 * 2 / 3


def test_compute_ap_by_hand():
    rec, prec = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert compute_ap(rec, prec, use_07_metric=True) == pytest.approx(AP07_DUP)
    assert compute_ap(rec, prec, use_07_metric=False) == pytest.approx(AP_ALL_DUP)
    assert AP07_DUP != pytest.approx(AP_ALL_DUP)
    # The reference's thresholds come from np.arange(0, 1.1, 0.1): the 4th is 0.30000000000000004, so a recall of
    # exactly 3/10 reaches only t = 0, 0.1, 0.2 → 3/11 (a textbook 11-point AP would give 4/11).
    assert compute_ap([3 / 10], [1.0], use_07_metric=True) == pytest.approx(3 / 11)
    assert compute_ap([3 / 10], [1.0], use_07_metric=False) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="recall has 2 points"):
        compute_ap([0.1, 0.2], [1.0])


@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("offsets", ["reference", "corrected"])
def test_perfect_detections_give_ap_one(use_07, offsets):
    images = [
        {"gt": [(0, A0, False), (1, B0, False)], "det": [(1, 0.9, A0), (2, 0.8, B0)]},
        {"gt": [(0, A1, False)], "det": [(1, 0.7, A1)]},
    ]
    metric = VOCMetric(NAMES, use_07_metric=use_07, offsets=offsets)
    metric.update(*make_batch(images, size=(100, 100)))
    res = metric.result()
    assert res["AP"]["a"] == pytest.approx(1.0)
    assert res["AP"]["b"] == pytest.approx(1.0)
    assert np.isnan(res["AP"]["c"])  # no GT: left out of the mean
    assert res["mAP"] == pytest.approx(1.0)
    assert res["npos"] == {"a": 2, "b": 1, "c": 0}
    np.testing.assert_allclose(res["recall"]["a"], [0.5, 1.0])
    np.testing.assert_allclose(res["precision"]["a"], [1.0, 1.0])


@pytest.mark.parametrize("use_07, expected", [(True, AP07_DUP), (False, AP_ALL_DUP)])
def test_duplicate_detection_is_false_positive(use_07, expected):
    g1, g2 = (0.1, 0.1, 0.3, 0.3), (0.6, 0.6, 0.9, 0.9)
    dup = (0.11, 0.1, 0.31, 0.3)  # IoU with g1 ≈ 0.9
    images = [{"gt": [(0, g1, False), (0, g2, False)], "det": [(1, 0.9, g1), (1, 0.8, dup), (1, 0.7, g2)]}]
    metric = VOCMetric(NAMES, use_07_metric=use_07, offsets="corrected")
    metric.update(*make_batch(images))
    res = metric.result()
    np.testing.assert_array_equal(res["tp"]["a"], [1, 0, 1])
    np.testing.assert_array_equal(res["fp"]["a"], [0, 1, 0])
    np.testing.assert_allclose(res["precision"]["a"], [1.0, 0.5, 2 / 3])
    np.testing.assert_allclose(res["recall"]["a"], [0.5, 0.5, 1.0])
    assert res["AP"]["a"] == pytest.approx(expected)
    # Without the duplicate both GT are found at precision 1.
    metric.reset()
    images[0]["det"] = [(1, 0.9, g1), (1, 0.7, g2)]
    metric.update(*make_batch(images))
    assert metric.result()["AP"]["a"] == pytest.approx(1.0)


def test_match_on_difficult_object_is_ignored():
    hard, easy = (0.1, 0.1, 0.4, 0.4), (0.5, 0.5, 0.9, 0.9)
    images = [{"gt": [(0, hard, True), (0, easy, False)],
               "det": [(1, 0.9, hard), (1, 0.85, hard), (1, 0.8, easy)]}]
    metric = VOCMetric(NAMES, offsets="corrected")
    metric.update(*make_batch(images))
    res = metric.result()
    assert res["npos"]["a"] == 1  # the difficult object does not count
    np.testing.assert_array_equal(res["tp"]["a"], [0, 0, 1])  # both hits on the difficult one: neither TP...
    np.testing.assert_array_equal(res["fp"]["a"], [0, 0, 0])  # ...nor FP (not even the second one)
    np.testing.assert_allclose(res["precision"]["a"], [0.0, 0.0, 1.0])
    assert res["AP"]["a"] == pytest.approx(1.0)  # had they been FPs: precision 1/3 → AP 1/3


def test_iou_must_exceed_threshold_strictly():
    # IoU exactly 0.5 (half of the GT box, all values exact in float32) is not a match.
    images = [{"gt": [(0, (0.0, 0.0, 1.0, 1.0), False)], "det": [(1, 0.9, (0.0, 0.0, 0.5, 1.0))]}]
    metric = VOCMetric(NAMES, offsets="corrected")
    metric.update(*make_batch(images))
    res = metric.result()
    np.testing.assert_array_equal(res["fp"]["a"], [1])
    assert res["AP"]["a"] == 0.0


def test_the_reference_coordinates_change_a_borderline_match():
    # Image 200 wide, 100 high; GT from XML (21, 11, 121, 61) → relative (x-1)/W → pixels x 20..120, y 10..60.
    gt_box = (20 / 200, 10 / 100, 120 / 200, 60 / 100)
    # Detection = GT shifted right by 32.5 px.  Exact: overlap 67.5·50 = 3375, IoU = 3375/(10000-3375) = 0.5094 → TP.
    # Reference: detection +1 px in x and y vs. GT → overlap 66.5·49 = 3258.5, IoU = 3258.5/6741.5 = 0.4834 → FP.
    det_box = (52.5 / 200, 10 / 100, 152.5 / 200, 60 / 100)
    images = [{"gt": [(0, gt_box, False)], "det": [(1, 0.87654, det_box)]}]
    batch = make_batch(images, size=(100, 200))
    exact = VOCMetric(NAMES, offsets="corrected")
    exact.update(*batch)
    reference = VOCMetric(NAMES, offsets="reference")
    reference.update(*batch)
    r_exact, r_ref = exact.result(), reference.result()
    assert r_exact["AP"]["a"] == pytest.approx(1.0)
    assert r_ref["AP"]["a"] == 0.0
    np.testing.assert_array_equal(r_ref["fp"]["a"], [1])
    # Scores are rounded to 3 decimals only in the reference mode (the reference's text files).
    assert r_ref["scores"]["a"][0] == 0.877
    assert r_exact["scores"]["a"][0] == pytest.approx(0.87654, abs=1e-6)


def test_the_reference_coordinates_need_image_size():
    images = [{"gt": [(0, A0, False)], "det": [(1, 0.9, A0)]}]
    with pytest.raises(ValueError, match="original_size"):
        VOCMetric(NAMES, offsets="reference").update(*make_batch(images))
    metric = VOCMetric(NAMES, offsets="reference", default_image_size=(100, 100))
    metric.update(*make_batch(images))
    assert metric.result()["AP"]["a"] == pytest.approx(1.0)


def multi_image_case():
    return [
        {"gt": [(0, A0, False), (1, B0, False)], "gt_pad": [PAD0],
         "det": [(1, 0.9, A0), (2, 0.6, B0), (1, 0.5, PAD0)],  # the last one hits only a padding row → FP
         "det_pad": [(3, 0.99, A0)]},  # past num_detections: must be ignored
        {"gt": [(0, A1, False)], "gt_pad": [A0, B0],
         "det": [(1, 0.8, A0), (1, 0.7, A1)],  # A0 is a GT of the *other* image → FP here
         "det_pad": [(1, 0.95, A1), (1, 0.96, A1)]},
    ]


@pytest.mark.parametrize("use_07, expected_a", [(True, AP07_DUP), (False, AP_ALL_DUP)])
def test_multi_image_batch_with_padding(use_07, expected_a):
    metric = VOCMetric(NAMES, use_07_metric=use_07, offsets="corrected")
    metric.update(*make_batch(multi_image_case()))
    res = metric.result()
    # Class a, sorted: .9 TP (img 0), .8 FP (img 1, other image's box), .7 TP (img 1), .5 FP (padding box).
    np.testing.assert_allclose(res["scores"]["a"], [0.9, 0.8, 0.7, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(res["tp"]["a"], [1, 0, 1, 0])
    np.testing.assert_allclose(res["precision"]["a"], [1, 0.5, 2 / 3, 0.5])
    assert res["npos"] == {"a": 2, "b": 1, "c": 0}
    assert res["AP"]["a"] == pytest.approx(expected_a)
    assert res["AP"]["b"] == pytest.approx(1.0)
    assert res["scores"]["c"].size == 0  # the class-3 row was padding
    assert np.isnan(res["AP"]["c"])
    assert res["mAP"] == pytest.approx((expected_a + 1.0) / 2)
    assert res["num_images"] == 2


def test_updates_accumulate_like_one_batch():
    one = VOCMetric(NAMES, offsets="reference", default_image_size=(300, 500))
    one.update(*make_batch(multi_image_case()))
    split = VOCMetric(NAMES, offsets="reference", default_image_size=(300, 500))
    for image in multi_image_case():
        split.update(*make_batch([image]))
    a, b = one.result(), split.result()
    assert a["mAP"] == pytest.approx(b["mAP"])
    for name in NAMES[:2]:
        np.testing.assert_array_equal(a["tp"][name], b["tp"][name])
        np.testing.assert_array_equal(a["fp"][name], b["fp"][name])


def test_class_with_ground_truth_but_no_detections_has_ap_zero():
    images = [{"gt": [(0, A0, False), (2, B0, False)], "det": [(1, 0.9, A0)]}]
    metric = VOCMetric(("a", "b", "c", "d"), offsets="corrected")
    metric.update(*make_batch(images))
    res = metric.result()
    assert res["AP"]["c"] == 0.0 and res["npos"]["c"] == 1
    assert res["precision"]["c"].size == 0 and res["recall"]["c"].size == 0
    assert np.isnan(res["AP"]["b"]) and np.isnan(res["AP"]["d"])  # no GT: skipped
    assert res["mAP"] == pytest.approx(0.5)  # mean of a (1.0) and c (0.0)


def test_accepts_tensorflow_tensors():
    import tensorflow as tf

    dets, gt = make_batch(multi_image_case(), size=(100, 100))
    metric = VOCMetric(NAMES)
    metric.update({k: tf.constant(v) for k, v in dets.items()}, {k: tf.constant(v) for k, v in gt.items()})
    ref = VOCMetric(NAMES)
    ref.update(dets, gt)
    assert metric.result()["mAP"] == pytest.approx(ref.result()["mAP"])


def test_bad_inputs_raise_clear_errors():
    dets, gt = make_batch([{"gt": [(0, A0, False)], "det": [(4, 0.9, A0)]}], size=(100, 100))
    metric = VOCMetric(NAMES)
    with pytest.raises(ValueError, match="class 4"):
        metric.update(dets, gt)
    assert metric.num_images == 0  # a rejected batch leaves no trace
    del dets["num_detections"]
    with pytest.raises(KeyError, match="num_detections"):
        metric.update(dets, gt)
    dets, gt = make_batch([{"gt": [(5, A0, False)], "det": []}], size=(100, 100))
    with pytest.raises(ValueError, match="label 5"):
        metric.update(dets, gt)
    assert len(VOC_CLASSES) == 20 and VOC_CLASSES[14] == "person"
    two, _ = make_batch([{"gt": [(0, A0, False)], "det": [(1, 0.9, A0)]}] * 2, size=(100, 100))
    with pytest.raises(ValueError, match="detections hold 2 images but ground_truth holds 1"):
        metric.update(two, gt)


def reference_style_eval(images, num_classes, use_07):
    """Independent oracle written the way the reference works: text lines per class, parsed back, one loop
    over detections.  ``images``: dicts with ``size`` (H, W), ``xml`` = [(label, 1-based int xyxy, difficult)],
    ``det`` = [(class, float32 score, float32 rel yxyx)]."""
    aps = []
    for label in range(num_classes):
        lines = []
        for idx, im in enumerate(images):
            h, w = im["size"]
            for cls, score, (ymin, xmin, ymax, xmax) in im["det"]:
                if cls != label + 1:
                    continue
                px = [xmin * np.float32(w), ymin * np.float32(h), xmax * np.float32(w), ymax * np.float32(h)]
                lines.append("{:d} {:.3f} {:.1f} {:.1f} {:.1f} {:.1f}".format(
                    idx, float(score), *(float(v) + 1 for v in px)))
        recs = {}
        npos = 0
        for idx, im in enumerate(images):
            objs = [(np.array(box) - 1.0, diff) for lab, box, diff in im["xml"] if lab == label]
            recs[idx] = {"bbox": [o[0] for o in objs], "difficult": [o[1] for o in objs], "det": [False] * len(objs)}
            npos += sum(not o[1] for o in objs)
        if not lines:
            aps.append(0.0 if npos else float("nan"))
            continue
        parts = [ln.split(" ") for ln in lines]
        conf = np.array([float(p[1]) for p in parts])
        order = np.argsort(-conf)
        tp, fp = np.zeros(len(lines)), np.zeros(len(lines))
        for d, k in enumerate(order):
            rec = recs[int(parts[k][0])]
            bb = np.array([float(v) for v in parts[k][2:]])
            best, arg = -np.inf, -1
            for j, g in enumerate(rec["bbox"]):
                iw = max(min(g[2], bb[2]) - max(g[0], bb[0]), 0.0)
                ih = max(min(g[3], bb[3]) - max(g[1], bb[1]), 0.0)
                inter = iw * ih
                iou = inter / ((bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter)
                if iou > best:
                    best, arg = iou, j
            if best > 0.5:
                if not rec["difficult"][arg]:
                    if not rec["det"][arg]:
                        tp[d], rec["det"][arg] = 1.0, True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        if npos == 0:
            aps.append(float("nan"))
            continue
        aps.append(compute_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07))
    return aps


@pytest.mark.parametrize("use_07", [True, False])
def test_reference_mode_matches_a_reference_style_loop_on_random_data(use_07):
    rng = np.random.default_rng(7)
    images = []
    for _ in range(6):
        h, w = int(rng.integers(80, 400)), int(rng.integers(80, 400))
        xml = []
        for _ in range(int(rng.integers(1, 6))):
            x1, y1 = int(rng.integers(1, w // 2)), int(rng.integers(1, h // 2))
            xml.append((int(rng.integers(0, 3)), (x1, y1, int(rng.integers(x1 + 5, w + 1)),
                                                  int(rng.integers(y1 + 5, h + 1))), bool(rng.random() < 0.2)))
        dets = []
        for _ in range(int(rng.integers(0, 12))):
            lab, (x1, y1, x2, y2), _ = xml[int(rng.integers(len(xml)))]
            jitter = rng.normal(0, 0.08, 4) * [x2 - x1, y2 - y1, x2 - x1, y2 - y1]
            bx = (np.array([x1, y1, x2, y2], float) - 1 + jitter) / [w, h, w, h]
            cls = lab + 1 if rng.random() < 0.8 else int(rng.integers(1, 4))
            score = np.float32(rng.choice([0.5, 0.9]) + rng.normal(0, 0.002))  # near-ties after rounding
            dets.append((cls, score, np.float32(bx[[1, 0, 3, 2]])))
        dets.sort(key=lambda d: -d[1])  # per-image order as Detect emits it (descending score)
        images.append({"size": (h, w), "xml": xml, "det": dets})
    expected = reference_style_eval(images, 3, use_07)

    metric = VOCMetric(NAMES, use_07_metric=use_07, offsets="reference")
    for im in images:  # one image per update, as the data reader would give it
        h, w = im["size"]
        gt = [(lab, ((x1 - 1) / w, (y1 - 1) / h, (x2 - 1) / w, (y2 - 1) / h), diff)  # the reader's (x - 1) / W
              for lab, (x1, y1, x2, y2), diff in im["xml"]]
        det = [(c, s, (b[1], b[0], b[3], b[2])) for c, s, b in im["det"]]
        metric.update(*make_batch([{"gt": gt, "det": det}], size=(h, w)))
    got = [metric.result()["AP"][n] for n in NAMES]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert not np.allclose(got, 1.0)  # a non-trivial case
