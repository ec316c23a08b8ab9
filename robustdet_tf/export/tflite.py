"""TFLite (LiteRT) export of the raw network, builtin ops only, float32 or dynamic-range quantised.

**Post-processing runs outside the TFLite model**, in ``robustdet_tf.detections`` (``TFLiteDetector``
does it for you).  Why not the ``TFLite_Detection_PostProcess`` op: it is a *custom* op (we export builtin ops
only, so any LiteRT runtime runs the file; not every runtime registers that op), and its semantics are not the
reference's ``Detect`` (docs/reference.md#detection-post-processing): it takes already-activated scores and yxhw
anchors, caps detections per class
and across classes instead of keeping the 200 best candidates per class *before* NMS, and has no strict ``> 0.01``
score test.  Exporting ``loc`` and ``logits`` keeps the TFLite graph a plain stack of convolutions that the XNNPACK
delegate and quantisation handle well, makes the float model exactly comparable with Keras, and lets the float and
quantised models share one reference-exact decode + NMS.  The model's prior / threshold settings travel in a JSON
file beside the ``.tflite`` (``<name>.json``) so ``TFLiteDetector`` needs nothing else.

Conversion path: ``keras.export.ExportArchive`` → SavedModel → ``TFLiteConverter.from_saved_model`` with
``TFLITE_BUILTINS`` only (a graph needing a Flex op fails to convert instead of producing a model that needs the
Select-TF-ops runtime).  Checked on TF 2.21 / Keras 3.15: ``from_concrete_functions(..., trackable_obj=model)``
converts but leaves the weights as uninitialised resource variables (NaN outputs), and ``from_keras_model`` refuses
our subclassed models ("input shapes have not been set"); the SavedModel path gives outputs equal to Keras'.

AAconv: the grouped convolution (``implementation="grouped"``, what ``auto`` picks on most machines) has no TFLite
builtin, so the model is rebuilt with ``stacked`` (all K kernels as one convolution, then a π-weighted sum of the
K outputs; K× the convolution work) or ``map_fn`` (one ordinary convolution per image with its π-mixed kernel;
lowers to a builtin ``WHILE``) and the weights are copied.  The default is ``stacked`` for both precisions,
because measured at SSD300 size, batch 1, 2 threads (bench/inference.py; TF 2.21, LiteRT 2.3): float32 ``stacked``
2.9 s per image against 15.6 s for ``map_fn`` — a convolution whose filter is computed at run time gets neither
XNNPACK nor the optimised constant-filter kernels, which costs far more than the K-fold work — and dynamic-range
quantisation only quantises *constant* weights, which with ``stacked`` means every AAconv kernel (0.9 s per image,
112 MB instead of 444 MB) while ``map_fn`` kernels stay float32.

The input batch size is fixed at export (default 1, the mobile case); ``TFLiteDetector`` feeds larger batches in
chunks.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.detections import postprocess
from robustdet_tf.export.saved_model import (
    check_detection_model,
    positive_int,
    raw_archive,
    with_aaconv_implementation,
)
from robustdet_tf.io import atomic_output, check_destination
from robustdet_tf.models.detector import feature_map_sizes
from robustdet_tf.priors import PriorSpec

QUANTIZATIONS = ("float32", "dynamic_range")
TFLITE_AACONV_IMPLEMENTATIONS = ("map_fn", "stacked")
DEFAULT_AACONV_IMPLEMENTATION = {"float32": "stacked", "dynamic_range": "stacked"}
METADATA_VERSION = 2  # 2: the prior spec travels in the sidecar ("priors"); 1 had only the model config


def sidecar_path(path: str | os.PathLike) -> str:
    """``model.tflite`` → ``model.json`` (model config and post-processing settings)."""
    return os.path.splitext(os.fspath(path))[0] + ".json"


def tflite_ready_copy(model: keras.Model, implementation: str) -> keras.Model:
    """The model itself if it has no AAconv (plain SSD) or already uses ``implementation``; otherwise a copy built
    with ``aaconv_implementation=implementation`` holding the same weights."""
    if implementation not in TFLITE_AACONV_IMPLEMENTATIONS:
        raise ValueError(
            f"TFLite export: aaconv_implementation must be one of {TFLITE_AACONV_IMPLEMENTATIONS} (the grouped "
            f"convolution has no TFLite builtin), got {implementation!r}"
        )
    return with_aaconv_implementation(model, implementation)


def write_raw_saved_model(
    model: keras.Model, directory: str, aaconv_implementation: str = "stacked", batch_size: int = 1
) -> None:
    """The converter's input: a SavedModel whose ``serving_default`` maps float32 pixel images
    ``[batch_size, S, S, 3]`` to ``loc``, ``logits`` (and ``pi`` for RobustDet), with TFLite-ready AAconvs."""
    check_detection_model(model, "TFLite export")
    batch_size = positive_int(batch_size, "batch_size")
    archive = raw_archive(tflite_ready_copy(model, aaconv_implementation), "serving_default", batch_size)
    archive.write_out(directory, verbose=False)


def convert_saved_model(directory: str, quantization: str = "float32") -> bytes:
    """TFLite flatbuffer of a SavedModel written by ``write_raw_saved_model``, builtin ops only."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    converter = tf.lite.TFLiteConverter.from_saved_model(directory)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "dynamic_range":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: int8 weights only
    return converter.convert()


def convert_to_tflite(
    model: keras.Model,
    quantization: str = "float32",
    aaconv_implementation: str | None = None,
    batch_size: int = 1,
) -> bytes:
    """The serialised TFLite model: float32 pixel images ``[batch_size, S, S, 3]`` → ``loc``, ``logits`` (and
    ``pi`` for RobustDet), signature ``serving_default``."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    implementation = aaconv_implementation or DEFAULT_AACONV_IMPLEMENTATION[quantization]
    with tempfile.TemporaryDirectory(prefix="robustdet_tflite_") as saved_model_dir:
        write_raw_saved_model(model, saved_model_dir, implementation, batch_size)
        return convert_saved_model(saved_model_dir, quantization)


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    quantization: str = "float32",
    aaconv_implementation: str | None = None,
    batch_size: int = 1,
    overwrite: bool = False,
) -> str:
    """Write ``path`` (``.tflite``) and its ``.json`` sidecar atomically; returns the ``.tflite`` path.

    ``quantization``: ``float32`` or ``dynamic_range`` (int8 weights, float activations).
    ``aaconv_implementation``: ``stacked`` (default, see the module docstring) or ``map_fn`` for RobustDet;
    ignored for the plain SSD.
    """
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"TFLite export path must end with .tflite, got {path}")
    check_destination(path, overwrite)
    check_destination(sidecar_path(path), overwrite)
    blob = convert_to_tflite(model, quantization, aaconv_implementation, batch_size)
    config = model.get_config()
    metadata = {
        "format_version": METADATA_VERSION,
        "model_class": type(model).__name__,
        "model_config": config,
        "quantization": quantization,
        "aaconv_implementation": (aaconv_implementation or DEFAULT_AACONV_IMPLEMENTATION[quantization])
        if "aaconv_implementation" in config
        else None,
        "batch_size": int(batch_size),
        "input": {"name": "images", "shape": [int(batch_size), model.image_size, model.image_size, 3],
                  "dtype": "float32", "range": "RGB pixels [0, 255]"},
        "outputs": [key for key in ("loc", "logits", "pi") if key != "pi" or model.capabilities().routed],
        "priors": model.prior_spec.to_dict(),
        "postprocess": model.postprocess_settings(),
        "class_names": None if model.class_names is None else list(model.class_names),  # network class c: [c - 1]
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as f:
            f.write(blob)
    with atomic_output(sidecar_path(path), overwrite=overwrite) as tmp:
        with open(tmp, "w") as f:
            json.dump(metadata, f, indent=1)
    return os.path.abspath(path)


def make_interpreter(model_path: str | None = None, model_content: bytes | None = None, num_threads: int | None = None):
    """A LiteRT interpreter (``ai_edge_litert``), or TF's bundled ``tf.lite.Interpreter`` when LiteRT is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=model_path, model_content=model_content, num_threads=num_threads)


def sidecar_priors(metadata: Mapping) -> PriorSpec:
    """The prior spec of an export: stored since format 2, derived from the model config for format-1 files."""
    if "priors" in metadata:
        return PriorSpec.from_dict(metadata["priors"])
    config = metadata["model_config"]
    size = int(config["image_size"])
    return PriorSpec.from_dict(config).with_feature_maps(size, feature_map_sizes(size, config["extras"]))


class TFLiteDetector:
    """Runs an exported ``.tflite`` and does decode + NMS outside with ``robustdet_tf.detections``.

    ``raw(images)`` → numpy ``loc``/``logits`` (/``pi``); ``detect(images)`` → OD-API detections, the same contract
    as ``model.detect``.  ``images`` are float pixel-space RGB at the model size; batches larger than the exported
    batch size run in chunks (a file runner, not a training step).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        path = os.fspath(path)
        meta_path = sidecar_path(path)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(
                f"{meta_path} (priors and thresholds of {path}) is missing; re-export with "
                "robustdet_tf.export.tflite.export_tflite, which writes both files"
            )
        with open(meta_path) as f:
            self.metadata = json.load(f)
        self.interpreter = make_interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.batch_size = int(self.metadata["batch_size"])
        self.image_size = int(self.metadata["model_config"]["image_size"])
        self.priors = tf.constant(sidecar_priors(self.metadata).boxes(), tf.float32)
        names = self.metadata.get("class_names") or self.metadata["model_config"].get("class_names")
        self.class_names = None if names is None else tuple(names)  # network class c is class_names[c - 1]

    def raw(self, images) -> dict[str, np.ndarray]:
        images = np.asarray(images, np.float32)
        expected = (self.image_size, self.image_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(
                f"TFLiteDetector: images must be [B, {self.image_size}, {self.image_size}, 3] float pixels, got "
                f"{images.shape}; resize them first (tf.image.resize(..., 'bilinear', antialias=False))"
            )
        chunks = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            missing = self.batch_size - len(chunk)
            if missing:
                chunk = np.concatenate([chunk, np.zeros((missing, *expected), np.float32)])
            out = self.runner(images=chunk)
            chunks.append({k: v[: self.batch_size - missing] for k, v in out.items()})
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def detect(self, images, **overrides) -> dict[str, tf.Tensor]:
        raw = self.raw(images)
        kwargs = {**self.metadata["postprocess"], **overrides}
        return postprocess(raw["loc"], raw["logits"], self.priors, **kwargs)
