"""The ART adapter: ART's own attacks run on our SSD and RobustDet, and its gradient is ours."""

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("art")

from art.attacks.evasion import DPatch, ProjectedGradientDescent, RobustDPatch  # noqa: E402

from robustdet_tf.attacks import objectives  # noqa: E402
from robustdet_tf.attacks import pgd as pgd_lib  # noqa: E402
from robustdet_tf.interop.art import ARTObjectDetector, targets_from_art  # noqa: E402
from robustdet_tf.models.robustdet import RobustDet  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402
from tests.conftest import TINY_SSD  # noqa: E402
from tests.helpers import rectangles  # noqa: E402

pytestmark = pytest.mark.slow  # among the slowest files of the suite; the quick loop (-m "not slow") leaves it out

SIZE = TINY_SSD["image_size"]


@pytest.fixture(scope="module", params=["ssd", "robustdet"])
def model(request):
    keras.utils.set_random_seed(0)  # the weights, whichever tests ran before in this worker
    model = SSD(**TINY_SSD) if request.param == "ssd" else RobustDet(**TINY_SSD, num_kernels=4, aid_width=8)
    model.build()
    return model


@pytest.fixture(scope="module")
def data():
    images, targets = rectangles(3, SIZE, seed=4)
    y = []
    for boxes, labels in zip(targets["boxes"], targets["labels"]):
        keep = labels >= 0
        y.append({"boxes": boxes[keep] * SIZE, "labels": labels[keep] + 1})  # ART: absolute x1y1x2y2, 1-based
    return np.clip(images, 20, 235), targets, y


def test_predict_gives_absolute_corner_boxes_and_one_based_labels(model, data):
    images, _, _ = data
    predictions = ARTObjectDetector(model).predict(images, batch_size=2)
    assert len(predictions) == 3
    # The reference runs the adapter's batches (2 + 1 images; a grouped AAconv folds the batch into its channels, so
    # another batch size sums in another order). An untrained detector scores many boxes near 1.0, and the order among
    # such near-ties follows the last bit of the logits, which oneDNN's threads may change from call to call: the
    # detections are compared as sets, each prediction paired with the closest unused reference of its class.
    batches = [model.detect(tf.constant(images[start : start + 2])) for start in (0, 2)]
    reference = [(d, i) for d in batches for i in range(int(d["num_detections"].shape[0]))]
    for p, (detections, i) in zip(predictions, reference):
        n = int(detections["num_detections"][i])
        assert p["boxes"].shape == (n, 4) and p["labels"].shape == p["scores"].shape == (n,)
        assert np.all(np.diff(p["scores"]) <= 0) and np.all(p["labels"] >= 1)
        ymin, xmin, ymax, xmax = detections["detection_boxes"][i, :n].numpy().T
        expected = np.concatenate([np.stack([xmin, ymin, xmax, ymax], -1) * SIZE,
                                   detections["detection_scores"][i, :n].numpy()[:, None]], -1)
        labels = detections["detection_classes"][i, :n].numpy().astype(int)
        got = np.concatenate([p["boxes"], p["scores"][:, None]], -1)
        used = np.zeros(n, bool)
        for row, label in zip(got, p["labels"]):
            gap = np.abs(expected - row).max(-1) / np.maximum(np.abs(expected).max(-1), 1.0)
            gap[used | (labels != label)] = np.inf
            j = int(np.argmin(gap))
            assert gap[j] < 1e-4, (row, label, expected[j], labels[j])
            used[j] = True


def test_targets_round_trip_and_the_gradient_is_ours(model, data):
    images, targets, y = data
    converted = targets_from_art(y, SIZE, SIZE)
    valid, ours_valid = targets["labels"] >= 0, converted["labels"].numpy() >= 0
    np.testing.assert_allclose(converted["boxes"].numpy()[ours_valid], targets["boxes"][valid], atol=1e-6)
    np.testing.assert_array_equal(converted["labels"].numpy()[ours_valid], targets["labels"][valid])
    ours = pgd_lib.input_gradient(objectives.make_objective("con"), model, tf.constant(images), converted).numpy()
    art_gradient = ARTObjectDetector(model).loss_gradient(images, y)
    assert art_gradient.shape == images.shape and np.abs(ours).max() > 0
    np.testing.assert_allclose(art_gradient, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    cls_only = ARTObjectDetector(model, attack_losses=("loss_c",)).loss_gradient(images, y)
    np.testing.assert_allclose(cls_only, pgd_lib.input_gradient(objectives.make_objective("cls"), model,
                                                                tf.constant(images), converted).numpy(),
                               rtol=1e-5, atol=1e-5 * np.abs(ours).max())
    losses = ARTObjectDetector(model).compute_losses(images, y)
    np.testing.assert_allclose([losses["loss_l"], losses["loss_c"]],
                               [float(v) for v in objectives.detection_terms(model, tf.constant(images), converted)],
                               rtol=1e-5)


def test_art_projected_gradient_descent_runs_through_the_adapter(model, data):
    images, _, y = data
    detector = ARTObjectDetector(model)
    attack = ProjectedGradientDescent(detector, eps=8.0, eps_step=2.0, max_iter=3, batch_size=3, verbose=False)
    adv = attack.generate(images, y=y)
    assert adv.shape == images.shape and np.abs(adv - images).max() <= 8.0 + 1e-4
    assert float(detector.compute_loss(adv, y)) > float(detector.compute_loss(images, y))


def test_art_patch_attacks_run_through_the_adapter(model, data):
    images, _, y = data
    detector = ARTObjectDetector(model)
    patch = DPatch(detector, patch_shape=(8, 8, 3), learning_rate=5.0, max_iter=1, batch_size=3,
                   verbose=False).generate(images)
    assert patch.shape == (8, 8, 3) and np.isfinite(patch).all()
    robust = RobustDPatch(detector, patch_shape=(8, 8, 3), patch_location=(4, 4), crop_range=(0, 0),
                          brightness_range=(1.0, 1.0), rotation_weights=(1, 0, 0, 0), sample_size=1,
                          learning_rate=5.0, max_iter=1, batch_size=3, verbose=False)
    patch = robust.generate(images)
    assert patch.shape == (8, 8, 3) and 0.0 <= patch.min() and patch.max() <= 255.0


def test_bad_settings_are_refused(data):
    model = SSD(**TINY_SSD)
    with pytest.raises(ValueError, match=r"clip_values must be \(0, 255\)"):
        ARTObjectDetector(model, clip_values=(0.0, 1.0))
    with pytest.raises(ValueError, match="attack_losses"):
        ARTObjectDetector(model, attack_losses=("rpn",))
    with pytest.raises(ValueError, match=r"images must be \[N, 64, 64, 3\]"):
        ARTObjectDetector(model).predict(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="labels are 1-based"):
        targets_from_art([{"boxes": np.zeros((1, 4)), "labels": np.array([0])}], SIZE, SIZE)
