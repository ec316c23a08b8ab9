"""One call that writes every deployment format of a trained model into one folder (``main.py --mode=export``).

Layout of ``out_dir`` (names fixed so scripts and the README can point at them):

* ``saved_model/`` — SavedModel with ``serving_default`` (uint8 images → OD-API detections) and ``raw``
* ``model_float32.tflite`` and ``model_dynamic_range.tflite`` (+ ``.json`` sidecars) — raw outputs, NMS outside
* ``model.keras`` — the Keras archive (reload with ``keras.saving.load_model``; training can resume from it)

Every file is written beside its destination and renamed into place; nothing existing is replaced unless
``overwrite=True``.  While an export runs, ``out_dir`` holds ``.export_unfinished.json`` naming the model (a hash of
its config and weights) and the formats; an export killed half way is completed in place by the same call for the
same model (the artifacts already whole are kept, the rest written, what the killed writes left removed), and
refused for another model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import keras

from robustdet_tf.export.saved_model import DEFAULT_MAX_DETECTIONS, check_detection_model, export_saved_model
from robustdet_tf.export.tflite import QUANTIZATIONS, export_tflite, sidecar_path
from robustdet_tf.io import DestinationExistsError, atomic_output, check_destination, remove_leftovers, write_text

FORMATS = ("saved_model", "tflite", "keras")
UNFINISHED = ".export_unfinished.json"


def model_fingerprint(model: keras.Model) -> str:
    """SHA-256 of the model's config and weights: which model an unfinished export belongs to."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(weight.path.encode() if hasattr(weight, "path") else b"")
        digest.update(keras.ops.convert_to_numpy(weight).tobytes())
    return digest.hexdigest()


def _whole(name: str, path: str) -> bool:
    """Whether the artifact ``name`` at ``path`` is in place (each file is renamed into place whole; a TFLite model
    counts with its sidecar only)."""
    if name.startswith("tflite_"):
        return os.path.exists(path) and os.path.exists(sidecar_path(path))
    return os.path.lexists(path)


def _resume(out_dir: str, paths: dict[str, str], targets: list[str], fingerprint: str) -> list[str]:
    """The artifacts an unfinished export of the same model still lacks (half pairs and leftovers removed)."""
    with open(os.path.join(out_dir, UNFINISHED), encoding="utf-8") as handle:
        record = json.load(handle)
    if record.get("fingerprint") != fingerprint or record.get("targets") != targets:
        raise DestinationExistsError(
            f"{out_dir} holds an unfinished export of another model or other formats ({record.get('targets')}); "
            "finish it with the model it was started for, or export to a new folder.", out_dir)
    remove_leftovers(out_dir)
    todo = []
    for name in targets:
        if _whole(name, paths[name]):
            continue
        for part in (paths[name], sidecar_path(paths[name])) if name.startswith("tflite_") else ():
            if os.path.exists(part):
                os.remove(part)  # one file of a pair this export began
        todo.append(name)
    return todo


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
    out_dir = os.path.abspath(os.fspath(out_dir))
    fingerprint = model_fingerprint(model)
    if os.path.exists(os.path.join(out_dir, UNFINISHED)):
        todo = _resume(out_dir, paths, targets, fingerprint)
    else:
        for name in targets:
            check_destination(paths[name], overwrite)
            if name.startswith("tflite_"):
                check_destination(sidecar_path(paths[name]), overwrite)
        todo = targets
        write_text(os.path.join(out_dir, UNFINISHED), json.dumps({"fingerprint": fingerprint, "targets": targets}))
    written = {name: paths[name] for name in targets}
    for name in todo:
        if name == "saved_model":
            written[name] = export_saved_model(model, paths[name], max_detections, overwrite=overwrite)
        elif name == "keras":
            written[name] = export_keras(model, paths[name], overwrite=overwrite)
        else:
            quantization = name[len("tflite_") :]
            written[name] = export_tflite(model, paths[name], quantization=quantization, overwrite=overwrite)
    os.remove(os.path.join(out_dir, UNFINISHED))
    return {name: written[name] for name in targets}
