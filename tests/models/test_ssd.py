"""The SSD keras.Model: pixel-space preprocessing, train_step (coupled weight decay), fit, detect, save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.models import build_model
from robustdet_tf.models.ssd import SSD
from robustdet_tf.models.training import sgd
from tests.helpers import rectangles


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
    model = SSD(**tiny_ssd_config)
    model.compile(optimizer=sgd(learning_rate=1e-3))
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(8).repeat()
    first = model.evaluate(images, targets, batch_size=8, verbose=0, return_dict=True)["loss"]
    model.fit(ds, steps_per_epoch=40, epochs=1, verbose=0)
    last = model.evaluate(images, targets, batch_size=8, verbose=0, return_dict=True)["loss"]
    assert last < 0.7 * first, (first, last)


def test_non_finite_loss_stops_training_with_the_term(tiny_ssd_config):
    images, targets = rectangles(2, 64)
    model = SSD(**tiny_ssd_config)
    model.build()
    bias = model.detector.loc_heads[0].bias
    bias.assign(np.full(bias.shape, np.nan, np.float32))
    model.compile(optimizer=sgd())
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-finite loss term loss_l at optimiser step"):
        model.fit(images, targets, batch_size=2, epochs=1, verbose=0)


def test_detect_and_keras_round_trip(tiny_ssd_config, tmp_path):
    model = SSD(**tiny_ssd_config, max_detections=10)
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=3)
    dets = model.detect(x)
    assert dets["detection_boxes"].shape == (2, 10, 4) and dets["num_detections"].shape == (2,)
    model.save(tmp_path / "ssd.keras")
    loaded = keras.saving.load_model(tmp_path / "ssd.keras")
    assert isinstance(loaded, SSD) and loaded.image_size == 64
    np.testing.assert_allclose(loaded(x)["logits"].numpy(), model(x)["logits"].numpy(), rtol=1e-5, atol=1e-5)


def test_build_model_from_config(tiny_ssd_config):
    model = build_model({"kind": "ssd", **tiny_ssd_config})
    assert isinstance(model, SSD) and model.num_classes == 4
    with pytest.raises(ValueError, match="unknown key.*'widht'"):
        build_model({"kind": "ssd", "widht": 0.5})
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model({"kind": "yolo"})
