"""One call that writes every deployment format of a trained model into one folder (``main.py --mode=export``).

Layout of ``out_dir`` (names fixed so scripts and the README can point at them):

* ``saved_model/`` — SavedModel with ``serving_default`` (uint8 images → OD-API detections) and ``raw``
* ``model_float32.tflite`` and ``model_dynamic_range.tflite`` (+ ``.json`` sidecars) — raw outputs, NMS outside
* ``model.keras`` — the Keras archive (reload with ``keras.saving.load_model``; training can resume from it)

Every file is written beside its destination and renamed into place; nothing existing is replaced unless
``overwrite=True``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras

from robustdet_tf.export.saved_model import DEFAULT_MAX_DETECTIONS, check_detection_model, export_saved_model
from robustdet_tf.export.tflite import QUANTIZATIONS, export_tflite, sidecar_path
from robustdet_tf.io import atomic_output, check_destination

FORMATS = ("saved_model", "tflite", "keras")


def export_paths(out_dir: str | os.PathLike) -> dict[str, str]:
    """Where ``export_all`` puts each artifact."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    paths = {"saved_model": os.path.join(out_dir, "saved_model"), "keras": os.path.join(out_dir, "model.keras")}
    for quantization in QUANTIZATIONS:
        paths[f"tflite_{quantization}"] = os.path.join(out_dir, f"model_{quantization}.tflite")
    return paths


def export_keras(model: keras.Model, path: str | os.PathLike, overwrite: bool = False) -> str:
    """``model.save`` through a temporary file and a rename."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        model.save(tmp)
    return os.path.abspath(os.fspath(path))


def export_all(
    model: keras.Model,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = FORMATS,
    overwrite: bool = False,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
) -> dict[str, str]:
    """Export ``model`` in each of ``formats`` (``saved_model``, ``tflite``, ``keras``); returns artifact → path.

    All destinations are checked before anything is written, so a refused overwrite leaves ``out_dir`` untouched.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise ValueError(f"unknown export format(s) {unknown or list(formats)}; choose from {list(FORMATS)}")
    check_detection_model(model, f"export_all({os.fspath(out_dir)})")
    paths = export_paths(out_dir)
    wanted = {
        "saved_model": ["saved_model"],
        "tflite": [f"tflite_{q}" for q in QUANTIZATIONS],
        "keras": ["keras"],
    }
    targets = [name for fmt in FORMATS if fmt in formats for name in wanted[fmt]]
    for name in targets:
        check_destination(paths[name], overwrite)
        if name.startswith("tflite_"):
            check_destination(sidecar_path(paths[name]), overwrite)
    written = {}
    for name in targets:
        if name == "saved_model":
            written[name] = export_saved_model(model, paths[name], max_detections, overwrite=overwrite)
        elif name == "keras":
            written[name] = export_keras(model, paths[name], overwrite=overwrite)
        else:
            quantization = name[len("tflite_") :]
            written[name] = export_tflite(model, paths[name], quantization=quantization, overwrite=overwrite)
    return written
