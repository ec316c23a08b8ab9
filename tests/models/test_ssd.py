"""The SSD keras.Model: pixel-space preprocessing, its MultiBox step with coupled weight decay, fit, save/load."""

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.models.ssd import SSD
from robustdet_tf.models.training import sgd
from tests.helpers import assert_keras_round_trip, compile_for_fit, rectangles


def test_model_eats_pixels(tiny_ssd_config):
    model = SSD(**tiny_ssd_config)
    pre = model.preprocess(tf.fill([1, 2, 2, 3], 200.0)).numpy()
    np.testing.assert_allclose(pre[0, 0, 0], [96.0, 83.0, 77.0])  # R-104, G-117, B-123
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=1)
    out = model(x)
    direct = model.detector(x - tf.constant([104.0, 117.0, 123.0]))
    np.testing.assert_allclose(out["logits"].numpy(), direct["logits"].numpy(), rtol=1e-6)
    assert set(out) == {"loc", "logits"}
    assert tuple(out["loc"].shape) == (2, model.priors.shape[0], 4)


def test_train_step_adds_coupled_weight_decay(tiny_ssd_config):
    images, targets = rectangles(2, 64)
    model = SSD(**tiny_ssd_config, weight_decay=0.1)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01, momentum=0.0))
    model.build()
    var = model.detector.conf_heads[0].kernel
    before = var.numpy()
    with tf.GradientTape() as tape:
        loss_l, loss_c = model.detection_loss(model(images, training=True), targets)
        total = loss_l + loss_c
    grad = tape.gradient(total, var).numpy()
    model.train_on_batch(images, targets)
    np.testing.assert_allclose(var.numpy(), before - 0.01 * (grad + 0.1 * before), rtol=1e-4, atol=1e-6)


def test_fit_lowers_the_multibox_loss(tiny_ssd_config):
    keras.utils.set_random_seed(0)
    images, targets = rectangles(16, 64, seed=0)
    model = compile_for_fit(SSD(**tiny_ssd_config), sgd(learning_rate=1e-3))
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(8).repeat()
    first = model.evaluate(images, targets, batch_size=8, verbose=0, return_dict=True)["loss"]
    model.fit(ds, steps_per_epoch=40, epochs=1, verbose=0)
    last = model.evaluate(images, targets, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert last < 0.7 * first, (first, last)


def test_keras_round_trip(tiny_ssd_config, tmp_path):
    model = SSD(**tiny_ssd_config, max_detections=10, adversarial={"method": "loc", "steps": 3}, clean_mix=False)
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=3)
    loaded = assert_keras_round_trip(model, x, tmp_path, rtol=1e-5, atol=1e-5)
    assert loaded.adversary.attack == model.adversary.attack and not loaded.clean_mix
    want, got = model.detect(x), loaded.detect(x)
    assert got["detection_boxes"].shape == (2, 10, 4)
    for key in want:
        np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


def test_a_training_step_matches_the_boxes_once_for_the_positive_count_and_the_loss(tiny_ssd_config, monkeypatch):
    """The global positive count and the MultiBox loss share one match (two matches a step before), and the loss
    equals the one that matches on its own."""
    from robustdet_tf import boxes

    images, targets = rectangles(2, 64)
    model = SSD(**tiny_ssd_config)
    model.build()
    outputs = model(images, training=True)
    own_match = model.detection_loss(outputs, targets)  # multibox_loss matching by itself
    calls = []
    original = boxes.match
    monkeypatch.setattr(boxes, "match", lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs))
    shared = model.detection_loss(outputs, targets, global_norm=True)
    assert len(calls) == 1
    np.testing.assert_allclose([float(v) for v in shared], [float(v) for v in own_match], rtol=1e-6)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01))
    calls.clear()
    model.train_on_batch(images, targets)  # traces the step: one match in it
    assert len(calls) == 1
