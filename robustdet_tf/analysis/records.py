"""Diagnostics' results as JSON: numpy arrays to lists, NaN (an undefined ratio) to ``null``, written atomically.

Why apart: every diagnostic hands back numpy arrays; the one rule for turning them into files (no NaN in JSON, which
strict parsers reject; no half-written file) is kept in one place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from robustdet_tf.io import write_text


def jsonable(value: Any) -> Any:
    """Nested dicts / lists / numpy values → plain JSON values; NaN and ±inf become ``None``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    return value


def write_json(path: str, obj: Any) -> None:
    """Atomically write ``jsonable(obj)`` as indented JSON."""
    write_text(path, json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n")


def nan_stat(values: Any, how: str) -> float | None:
    """``mean`` / ``median`` of the finite entries of ``values`` (``None`` if there are none)."""
    array = np.asarray(values, np.float64).ravel()
    array = array[np.isfinite(array)]
    if array.size == 0:
        return None
    return float(np.median(array) if how == "median" else np.mean(array))
