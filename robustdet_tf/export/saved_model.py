"""SavedModel export with the TF Object Detection API serving contract.

Two signatures, so one artifact serves both deployment and robustness work:

* ``serving_default``: ``images`` uint8 ``[B, H, W, 3]`` RGB of any size → ``detection_boxes`` ``[B, M, 4]``
  (relative ymin, xmin, ymax, xmax), ``detection_scores`` ``[B, M]``, ``detection_classes`` ``[B, M]`` (float32
  network class, 1-based, as the OD API), ``num_detections`` ``[B]``, with a fixed ``M = max_detections``.  Images
  are resized inside to the model's square input (bilinear, half-pixel centres, no antialiasing — the reference's
  resize, docs/reference.md#preprocessing).  Relative coordinates do not change under that resize, so the boxes apply to
  the original
  image as they are.
* ``raw``: float32 pixel-space images ``[B, S, S, 3]`` at the model size → ``loc``, ``logits`` and, for RobustDet,
  the AID mixture ``pi``: what attack libraries and the TFLite path (decode + NMS outside) need.

A model that knows its classes also gets ``labels.txt`` in the export folder (line ``c`` names
``detection_classes == c``).

Built with ``keras.export.ExportArchive`` (tracks the Keras 3 variables properly) and written to a temporary
directory that is renamed into place; an existing export is replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from robustdet_tf.io import atomic_output
from robustdet_tf.models.base import DetectionModelBase

DEFAULT_MAX_DETECTIONS = 100
LABELS_FILE = "labels.txt"
RAW_OUTPUTS = ("loc", "logits", "pi")  # pi only for RobustDet
DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")


def check_detection_model(model: keras.Model, what: str) -> None:
    """Exports need our detector interface (``image_size``, ``postprocess``, dict outputs)."""
    if not isinstance(model, DetectionModelBase):
        raise TypeError(
            f"{what}: expected an SSD or RobustDet from robustdet_tf.models, got {type(model).__name__}; "
            "load a .keras file with keras.saving.load_model first"
        )
    if not model.built:
        model.build()


def with_aaconv_implementation(model: keras.Model, implementation: str | None) -> keras.Model:
    """The model itself when it has no AAconv (plain SSD), ``implementation`` is None or already in use; otherwise a
    copy built with ``aaconv_implementation=implementation`` holding the same weights (the original is untouched)."""
    config = model.get_config()
    if implementation is None or config.get("aaconv_implementation", implementation) == implementation:
        return model
    copy = type(model).from_config({**config, "aaconv_implementation": implementation})
    copy.build()
    copy.set_weights(model.get_weights())
    return copy


def raw_outputs(model: keras.Model, images: tf.Tensor) -> dict[str, tf.Tensor]:
    """Test-mode head outputs (``training=False``: AID on running statistics, CFR uses μ)."""
    out = model(images, training=False)
    return {key: out[key] for key in RAW_OUTPUTS if key in out}


def positive_int(value: int, name: str) -> int:
    """``value`` as an int, refusing anything below 1 with a message naming ``name``."""
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def raw_archive(model: keras.Model, endpoint: str, batch_size: int | None) -> keras.export.ExportArchive:
    """An archive tracking ``model`` with one endpoint ``endpoint``: float32 pixel images ``[batch_size, S, S, 3]``
    → ``raw_outputs`` (the shared first step of the SavedModel and TFLite exports)."""
    size = model.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        endpoint,
        lambda images: raw_outputs(model, images),
        input_signature=[tf.TensorSpec([batch_size, size, size, 3], tf.float32, name="images")],
    )
    return archive


def serving_detections(model: keras.Model, images: tf.Tensor, max_detections: int) -> dict[str, tf.Tensor]:
    """uint8 images of any size → OD-API detections of the model at its own input size.  An empty batch (or an
    image of no pixels) is refused with a message naming the signature and what it takes (RobustDet's per-image
    convolution would fail on it with a message about filter depths)."""
    size = model.image_size
    shape = tf.shape(images)
    check = tf.debugging.assert_positive(
        shape[:3], message="serving_default takes a batch of at least one uint8 image [N >= 1, H >= 1, W >= 1, 3]; "
        "it was given an empty batch or an image without pixels")
    with tf.control_dependencies([check]):
        images = tf.identity(images)
    pixels = tf.image.resize(tf.cast(images, tf.float32), [size, size], method="bilinear", antialias=False)
    return model.postprocess(model(pixels, training=False), max_detections=max_detections)


def export_saved_model(
    model: keras.Model,
    path: str | os.PathLike,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    overwrite: bool = False,
    aaconv_implementation: str | None = None,
) -> str:
    """Write ``model`` (SSD or RobustDet, with or without CFR) as a SavedModel at ``path``; returns the path.

    Load with ``tf.saved_model.load(path)`` and call ``.signatures["serving_default"](images=uint8_batch)`` or
    ``.signatures["raw"](images=float_batch)``.  RobustDet's AAconvs are traced with the implementation the model
    resolved on this machine (``auto`` → ``grouped`` where grouped convolutions work); pass
    ``aaconv_implementation="map_fn"`` or ``"stacked"`` for an export that needs no grouped-convolution kernel.
    """
    check_detection_model(model, f"export_saved_model({os.fspath(path)})")
    max_detections = positive_int(max_detections, "max_detections")
    model = with_aaconv_implementation(model, aaconv_implementation)
    archive = raw_archive(model, "raw", batch_size=None)
    archive.add_endpoint(
        "serving_default",
        lambda images: serving_detections(model, images, max_detections),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
    )
    with atomic_output(path, overwrite=overwrite, directory=True) as tmp:
        archive.write_out(tmp, verbose=False)
        if model.class_names is not None:  # the label map: line c is network class c + 1 (detection_classes)
            with open(os.path.join(tmp, LABELS_FILE), "w", encoding="utf-8") as handle:
                handle.write("".join(f"{name}\n" for name in model.class_names))
    return os.path.abspath(os.fspath(path))
