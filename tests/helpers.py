"""Small data builders and assertions shared by tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import keras
import numpy as np


def rectangles(n, size, seed=0, max_boxes=3):
    """Images with solid rectangles whose colour encodes the class (classes 0..2), padded targets."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (n, size, size, 3)).astype(np.float32)
    colours = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.float32)
    boxes = np.zeros((n, max_boxes, 4), np.float32)
    labels = -np.ones((n, max_boxes), np.int32)
    for i in range(n):
        for j in range(rng.integers(1, max_boxes + 1)):
            w, h = rng.uniform(0.25, 0.6, 2)
            x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            c = rng.integers(0, 3)
            images[i, int(y0 * size) : int((y0 + h) * size), int(x0 * size) : int((x0 + w) * size)] = colours[c]
            boxes[i, j] = (x0, y0, x0 + w, y0 + h)
            labels[i, j] = c
    return images, {"boxes": boxes, "labels": labels}


def train_on_detection_loss(model, images, targets, steps, learning_rate=3e-3):
    """``steps`` Adam steps of the MultiBox loss on one fixed batch (a quick way to a model that detects it)."""
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(learning_rate)
    x, t = tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.add_n(model.detection_loss(model(x, training=True), t))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for _ in range(steps):
        step()
    return model


def compile_for_fit(model, optimizer):
    """``model.compile(optimizer)`` with the optimizer's variables built at once.

    Otherwise the first ``fit`` / ``train_on_batch`` creates them inside its ``tf.function`` and traces the step
    twice (about 10 s more for the tiny SSD on 2 CPU cores); the updates are the same either way.
    """
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    return model


def assert_same_model(original, loaded, inputs, atol=1e-6, rtol=0.0, call_kwargs=None, compare_config=True):
    """``loaded`` is ``original`` again: same class, same ``get_config()`` and the same outputs on ``inputs``.

    Outputs may be a tensor, a list or a dict (compared leaf by leaf); ``call_kwargs`` (e.g. ``{"training":
    False}``) go to both calls.
    """
    call_kwargs = call_kwargs or {}
    assert type(loaded) is type(original), (type(loaded), type(original))
    if compare_config:  # as JSON, what the archive stores: a tuple comes back as a list
        as_json = lambda obj: json.loads(json.dumps(obj.get_config()))  # noqa: E731
        assert as_json(loaded) == as_json(original)
    want = original(inputs, **call_kwargs)
    got = loaded(inputs, **call_kwargs)
    keras.tree.assert_same_structure(got, want)
    for (path, w), g in zip(keras.tree.flatten_with_path(want), keras.tree.flatten(got)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol, rtol=rtol, err_msg=f"output {path}")


def assert_keras_round_trip(model_or_layer, inputs, tmp_path, atol=1e-6, rtol=0.0, call_kwargs=None,
                            compare_config=True):
    """Save to ``.keras``, reload with ``keras.saving.load_model`` and check ``assert_same_model``.

    A bare layer is wrapped in a functional model with one ``keras.Input`` per input array (``inputs`` a list for
    layers called as ``layer([x, pi])``); the reloaded *layer* is then checked and returned, else the reloaded model.
    """
    obj = model_or_layer
    model = obj
    if not isinstance(obj, keras.Model):
        arrays = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        placeholders = [keras.Input(np.shape(a)[1:]) for a in arrays]
        model = keras.Model(placeholders, obj(placeholders if isinstance(inputs, (list, tuple)) else placeholders[0]))
    path = tmp_path / f"{obj.name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    if not isinstance(obj, keras.Model):
        loaded = loaded.get_layer(obj.name)
    assert_same_model(obj, loaded, inputs, atol=atol, rtol=rtol, call_kwargs=call_kwargs,
                      compare_config=compare_config)
    return loaded


@contextlib.contextmanager
def lock_held_by_another_process(folder):
    """A second process that holds ``folder``'s workdir lock until the block ends, then is killed (SIGKILL: no
    clean-up of its own runs); yields its pid."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom robustdet_tf.io import workdir_lock\n"
         f"with workdir_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(600)\n"],
        cwd=root, stdout=subprocess.PIPE, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def evaluation_batches(images, targets, batch_size: int = 4):
    """``images`` and their ``targets`` as evaluation batches: every object not difficult, the image ids and sizes
    the VOC metric reads."""
    import tensorflow as tf

    count, size = len(images), images.shape[1]
    full = {**targets, "difficult": np.zeros_like(targets["labels"], bool),
            "image_id": np.array([f"rect_{i}" for i in range(count)]),
            "original_size": np.full((count, 2), size, np.int32)}
    return tf.data.Dataset.from_tensor_slices((images, full)).batch(batch_size)
