"""The ``Corrupt`` column: mAP under natural corruptions (fog, blur, JPEG, noise, …), mPC and rPC as the Robust
Detection Benchmark reports them.

Why through ``imagecorruptions``: the benchmark (Michaelis et al. 2019, VOC-C / COCO-C) defines its 15 corruptions
and 5 severities by that package's code; a reimplementation would measure something else.  The maintained
``imagecorruptions-imaug`` release (the same import name) runs under NumPy 2 and current scikit-image.

What the column means: mPC, the mean of the mAP over every (corruption, severity) pair the protocol lists
(``protocol["corruptions"]``); rPC = mPC / clean mAP.  Each pair is a cell of its own (``Corrupt:<name>:<severity>``,
reported in ``robustness.json``), evaluated like the clean column on corrupted images; its intervals and the
column's come from the same paired bootstrap as every other cell.

Why the corrupted images are the same for every model: each image's corruption is drawn from a seed that is a pure
function of (protocol seed, corruption, severity, batch index, position in the batch), so every model of a table,
every rerun and every worker sees the same corrupted pixels: the comparison is paired.  They are computed once per
image and kept in ``<output_dir>/shards/corruptions/<pair>/`` while the pair's cells are computed (the table
computes every model's cell of one pair before the next pair, then removes that pair's files); a missing file is
computed again, identically, so the files save time and never decide a number.

Where the corruption applies: to the network-size evaluation image (rounded to uint8, the package's input), the
image every attack of the table perturbs too; the benchmark corrupts the full-size image before resizing.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from robustdet_tf.io import atomic_output

COLUMN = "Corrupt"
"""The table column of mPC (rPC rides with it in ``robustness.json``)."""
COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
          "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
"""The benchmark's 15 corruptions (``imagecorruptions.get_corruption_names("common")``)."""
HELD_OUT = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
"""The package's 4 validation corruptions, accepted on request."""
SEVERITIES = (1, 2, 3, 4, 5)
DEFAULT_SETTINGS: dict[str, Any] = {"names": list(COMMON), "severities": list(SEVERITIES), "seed": 0}
"""A protocol's ``corruptions`` entry: every common corruption at every severity, seed 0."""
_SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")
"""Corruptions that draw from their own generator (scikit-image's, numba's) and take a ``seed`` argument; the
others draw from NumPy's global generator."""


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse unknown corruptions and severities outside 1..5, naming the accepted values."""
    names, severities = list(settings["names"]), list(settings["severities"])
    unknown = [n for n in names if n not in COMMON + HELD_OUT]
    if unknown or not names:
        raise ValueError(f"protocol corruptions.names {names!r}: {unknown or 'empty'} — choose from {list(COMMON)} "
                         f"(the benchmark's 15) or {list(HELD_OUT)}.")
    wrong = [s for s in severities if s not in SEVERITIES]
    if wrong or not severities:
        raise ValueError(f"protocol corruptions.severities {severities!r}: each must be an integer in 1..5.")
    if len(set(names)) != len(names) or len(set(severities)) != len(severities):
        raise ValueError(f"protocol corruptions lists a corruption or severity twice: {names!r}, {severities!r}.")


def sub_columns(settings: Mapping[str, Any]) -> list[str]:
    """The cells of the column: ``Corrupt:<name>:<severity>`` for every pair, names outer, severities inner."""
    return [f"{COLUMN}:{name}:{int(severity)}" for name in settings["names"] for severity in settings["severities"]]


def is_sub_column(column: str) -> bool:
    return column.startswith(COLUMN + ":")


def parse(column: str) -> tuple[str, int]:
    """``Corrupt:fog:3`` → ``("fog", 3)``."""
    _, name, severity = column.split(":")
    return name, int(severity)


def image_seed(seed: int, name: str, severity: int, batch_index: int, position: int) -> int:
    """The seed of one image's corruption: a pure function of the table's seed, the pair and the image's place."""
    words = [int(seed), zlib.crc32(name.encode()), int(severity), int(batch_index), int(position)]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """``imagecorruptions.corrupt`` of one uint8 ``[H, W, 3]`` image, its randomness fixed by ``seed``."""
    from imagecorruptions import corrupt  # imports numba, scikit-image and OpenCV: only when a table asks for it

    np.random.seed(seed)
    extra = {"seed": seed} if name in _SEEDED_BY_ARGUMENT else {}
    return corrupt(image, severity=int(severity), corruption_name=name, **extra)


def corrupt_batch(images: np.ndarray, name: str, severity: int, seed: int, batch_index: int) -> np.ndarray:
    """A batch of float images in [0, 255] → its corrupted uint8 batch (each image rounded to uint8 first)."""
    pixels = np.clip(np.rint(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
    if pixels.shape[1] < 32 or pixels.shape[2] < 32:
        raise ValueError(f"corruptions need images of at least 32 × 32 pixels; the table's are {pixels.shape[1:3]}.")
    return np.stack([corrupt_image(pixels[i], name, severity, image_seed(seed, name, severity, batch_index, i))
                     for i in range(pixels.shape[0])]) if len(pixels) else pixels


def cache_dir(shards_root: str, column: str) -> str:
    """Where one pair's corrupted batches are kept while its cells are computed."""
    name, severity = parse(column)
    return os.path.join(shards_root, "corruptions", f"{name}-{severity}")


def corrupter(column: str, seed: int, folder: str | None) -> Callable[[int, tf.Tensor], tf.Tensor]:
    """``(batch index, images) → corrupted images`` of ``column`` for the shard engine (``sharded.compute_shards``'s
    ``prepare``), which calls it only for the batches this worker computes.

    The corruption runs in NumPy before the cell's compiled step sees the batch: it is data for the cell, like
    decoding an image.  With ``folder``, batch ``i`` is read from ``folder/batch-<i>.npy`` if an earlier cell of the
    pair wrote it, else computed and written (atomically)."""
    name, severity = parse(column)

    def prepare(index: int, images: tf.Tensor) -> tf.Tensor:
        pixels = np.asarray(images)
        path = None if folder is None else os.path.join(folder, f"batch-{int(index):06d}.npy")
        if path is not None and os.path.exists(path):
            stored = np.load(path)
            if stored.shape == pixels.shape:
                return tf.constant(stored.astype(np.float32))
        out = corrupt_batch(pixels, name, severity, seed, int(index))
        if path is not None:
            os.makedirs(folder, exist_ok=True)
            with atomic_output(path, overwrite=True) as temporary:
                with open(temporary, "wb") as handle:
                    np.save(handle, out)
        return tf.constant(out.astype(np.float32))

    return prepare


def summarise(values: Mapping[str, float | None], columns: Sequence[str]) -> float | None:
    """mPC of one model: the mean of its pairs' mAP (``None`` if any pair is undefined)."""
    cells = [values.get(c) for c in columns]
    return None if not cells or any(v is None for v in cells) else float(np.mean(cells))


def results_entries(pairs: Mapping[str, Mapping[str, float | None]], values: Mapping[str, Mapping[str, Any]],
                    intervals: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The ``robustness.json`` entries of the column: ``corruptions`` (its settings and every model's mAP per
    corruption and severity, with intervals) and ``rPC`` (mPC / clean per model, with its paired interval)."""
    cells = (intervals or {}).get("cells", {})
    per_model: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    for model, row in pairs.items():
        per_model[model] = {}
        for column, value in row.items():
            name, severity = parse(column)
            low, high = cells.get(model, {}).get(column, (None, None))
            per_model[model].setdefault(name, {})[str(severity)] = {"mAP": value, "ci_low": low, "ci_high": high}
    rpc: dict[str, dict[str, float | None]] = {}
    for model, row in values.items():
        mpc, clean = row.get(COLUMN), row.get("clean")
        point = None if mpc is None or not clean else mpc / clean
        low, high = (None, None)
        if intervals and "rPC" in intervals.get("ratios", {}).get(model, {}):
            _, low, high = intervals["ratios"][model]["rPC"]
        rpc[model] = {"value": point, "ci_low": low, "ci_high": high}
    return {"corruptions": {"settings": {"names": list(settings["names"]),
                                         "severities": [int(s) for s in settings["severities"]],
                                         "seed": int(settings["seed"])},
                            "mPC_of": "the mean mAP over every corruption and severity listed",
                            "models": per_model},
            "rPC": rpc}
