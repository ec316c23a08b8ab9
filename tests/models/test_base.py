"""The shared ``DetectionModelBase``: the one ``train_step`` (unpack → adversary → tape → ``compute_losses`` →
finite check → coupled weight decay + optimiser → tracking), ``test_step``, ``detect`` / ``predict`` and the config.

The step is tested on a toy subclass whose ``compute_losses`` has a known gradient and whose terms are plain
functions of the data, so every number the step produces can be predicted exactly (and traces in a second).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.models.adversarial import AdversarialBatch
from robustdet_tf.models.base import DetectionModelBase, TrainingData, unpack_training_data
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import rectangles

TARGET = np.array([1.0, -2.0], np.float32)  # the toy's optimum


class Toy(DetectionModelBase):
    """``loss = |w - TARGET|²``; ``mean`` = mean pixel of the clean half, ``objects`` = its non-padding labels and,
    with an adversary, ``shift`` = mean of (adversarial − clean) of the attacked half."""

    def __init__(self, adversary=None, **kwargs):
        super().__init__(**{**TINY_SSD, "weight_decay": 0.0, **kwargs})
        self.w = self.add_weight(shape=(2,), initializer="zeros", name="w")
        self.adversary = adversary
        self._init_trackers(("loss", "mean", "objects") + (("shift",) if adversary else ()))

    def call(self, images, training=None):
        return images

    def compute_losses(self, data, adversarial):
        assert isinstance(data, TrainingData)
        terms = {
            "loss": tf.reduce_sum(tf.square(self.w - TARGET)),
            "mean": tf.reduce_mean(data.clean),
            "objects": tf.reduce_sum(tf.cast(data.clean_targets["labels"] >= 0, tf.float32)),
        }
        if adversarial is not None:
            terms["shift"] = tf.reduce_mean(adversarial.images - adversarial.clean)
        return terms


class ShiftAdversary:
    """Stands in for ``AdversarialSchedule``: the "attack" adds ``shift`` to the images it is given."""

    def __init__(self, shift):
        self.shift = shift

    def next_batch(self, model, images, targets):
        return AdversarialBatch(images + self.shift, images, targets)


def batch(value, n=2, objects=1):
    """``n`` images filled with ``value``, each with ``objects`` boxes (the rest padding)."""
    labels = np.full((n, 3), -1, np.int32)
    labels[:, :objects] = 0
    return np.full((n, 8, 8, 3), value, np.float32), {"boxes": np.zeros((n, 3, 4), np.float32), "labels": labels}


def fit(model, data, steps, learning_rate=0.1, epochs=1):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate))
    return model.fit(data, steps_per_epoch=steps, epochs=epochs, verbose=0, shuffle=False).history


# ----------------------------------------------------------------------------------------------- unpacking
def test_unpack_plain_forms_and_dtypes():
    images, targets = batch(3.0)
    targets = {"boxes": targets["boxes"].astype(np.float64), "labels": targets["labels"].astype(np.int64),
               "difficult": np.zeros((2, 3), bool)}
    for data in ((images.astype(np.uint8), targets), (images, targets, np.ones(2, np.float32))):
        got = unpack_training_data(data, adversarial=False)
        assert got.clean.dtype == tf.float32 and got.to_attack is None and got.to_attack_targets is None
        np.testing.assert_array_equal(got.clean.numpy(), images)
        assert set(got.clean_targets) == {"boxes", "labels"}  # other keys dropped
        assert got.clean_targets["boxes"].dtype == tf.float32 and got.clean_targets["labels"].dtype == tf.int32
        np.testing.assert_array_equal(got.clean_targets["labels"].numpy(), targets["labels"])


def test_unpack_adversarial_form():
    (clean, clean_t), (other, other_t) = batch(1.0, objects=1), batch(2.0, objects=2)
    got = unpack_training_data(((clean, clean_t), (other.astype(np.uint8), other_t)), adversarial=True)
    np.testing.assert_array_equal(got.clean.numpy(), clean)
    np.testing.assert_array_equal(got.to_attack.numpy(), other)
    assert got.to_attack.dtype == tf.float32 and got.to_attack_targets["labels"].dtype == tf.int32
    np.testing.assert_array_equal(got.to_attack_targets["labels"].numpy(), other_t["labels"])


def test_unpack_adversarial_refuses_a_plain_batch_clearly():
    clean, clean_t = batch(1.0, objects=1)
    with pytest.raises(ValueError, match="two_streams; got a plain batch"):
        unpack_training_data((tf.constant(clean), clean_t), adversarial=True)


# ------------------------------------------------------------------------------------------------ the step
def test_the_subclass_compute_losses_is_what_the_optimiser_minimises():
    model = Toy(weight_decay=0.1)
    images, targets = batch(1.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    w = model.w.numpy()
    for _ in range(3):
        logs = model.train_on_batch(images, targets, return_dict=True)
        assert logs["loss"] == pytest.approx(float(np.sum((w - TARGET) ** 2)), rel=1e-6)
        w = w - 0.1 * (2 * (w - TARGET) + 0.1 * w)  # gradient of the toy's loss + coupled weight decay
        np.testing.assert_allclose(model.w.numpy(), w, rtol=1e-6)
    with pytest.raises(NotImplementedError):
        DetectionModelBase.compute_losses(model, None, None)


def test_logs_are_running_means_of_every_term_reset_each_epoch():
    batches = [batch(v, objects=k) for v, k in ((1.0, 1), (2.0, 3), (6.0, 1), (10.0, 2))]
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.stack([b[0] for b in batches]), {k: np.stack([b[1][k] for b in batches]) for k in ("boxes", "labels")})
    )
    model = Toy()
    history = fit(model, dataset.repeat(), steps=2, epochs=2)
    assert set(history) == {"loss", "mean", "objects"} == {m.name for m in model.metrics}
    np.testing.assert_allclose(history["mean"], [1.5, 8.0])  # batches 1, 2 then 3, 4: not 4.75 (no reset)
    np.testing.assert_allclose(history["objects"], [(2 + 6) / 2, (2 + 4) / 2])


def test_adversarial_step_hands_the_adversary_batch_to_compute_losses():
    model = Toy(adversary=ShiftAdversary(5.0))
    clean, to_attack = batch(1.0), batch(7.0)
    history = fit(model, tf.data.Dataset.from_tensors((clean, to_attack)).repeat(), steps=2)
    assert history["shift"] == [pytest.approx(5.0)]
    assert history["mean"] == [pytest.approx(1.0)]  # the clean half stays clean


def test_non_finite_term_fails_the_step_naming_it_and_the_step_before_any_update():
    model = Toy()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.train_on_batch(*batch(1.0))
    w = model.w.numpy()
    message = r"(?s)non-finite loss term mean at optimiser step\W+1\b"  # step 1: the second step
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        model.train_on_batch(*batch(np.nan))  # the toy's loss and gradient are finite: only "mean" is not
    np.testing.assert_array_equal(model.w.numpy(), w)  # the guard runs before the update
    assert int(model.optimizer.iterations.numpy()) == 1


def test_real_detector_non_finite_loss_names_loss_l(tiny_ssd_config):
    images, targets = rectangles(2, 64)
    model = SSD(**tiny_ssd_config)
    bias = model.detector.loc_heads[0].bias
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite loss term loss_l at optimiser step"):
        model.train_on_batch(images, targets)


# ----------------------------------------------------------------------------------- evaluation and detection
def test_test_step_detect_predict_and_config(tiny_ssd_config):
    images, targets = rectangles(4, 64, seed=1)
    model = SSD(**tiny_ssd_config, max_detections=7, score_threshold=0.02)
    model.compile(optimizer=keras.optimizers.SGD(1e-3))
    logs = model.evaluate(images, targets, batch_size=4, verbose=0, return_dict=True)
    loss_l, loss_c = (float(v) for v in model.detection_loss(model(images, training=False), targets))
    assert logs["loss_l"] == pytest.approx(loss_l, rel=1e-5) and logs["loss_c"] == pytest.approx(loss_c, rel=1e-5)
    assert logs["loss"] == pytest.approx(loss_l + loss_c, rel=1e-5)

    assert model.postprocess_settings() == {"score_threshold": 0.02, "pre_nms_top_k": 200, "iou_threshold": 0.45,
                                            "max_detections": 7}
    detections = model.detect(images)
    assert detections["detection_boxes"].shape == (4, 7, 4)
    assert model.detect(images, max_detections=3)["detection_scores"].shape == (4, 3)  # per-call override
    predicted = model.predict(images, batch_size=4, verbose=0)
    for key, value in detections.items():
        np.testing.assert_allclose(predicted[key], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)

    rebuilt = SSD.from_config(model.get_config())
    assert rebuilt.get_config() == model.get_config()
    assert rebuilt.max_detections == 7 and rebuilt.prior_spec == model.prior_spec
