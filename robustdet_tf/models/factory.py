"""Config → model: the one place that maps ``config.model.kind`` to a class and checks the keys.

Why a module of its own: the trainer, the importer of official checkpoints and the tests all build models from a
config dict, and an unknown key must fail the same way everywhere (naming the key and the accepted ones).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras

from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD

MODEL_CLASSES: dict[str, type] = {"ssd": SSD, "robustdet": RobustDet}


def constructor_keys(cls: type) -> set[str]:
    """Every keyword argument the constructors of ``cls`` and its bases (up to ``keras.Model``) accept."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if klass is keras.Model:
            break
        accepted |= set(inspect.signature(klass.__init__).parameters) - {"self", "args", "kwargs"}
    return accepted


def build_model(config: Mapping[str, Any]) -> keras.Model:
    """Build any model from its config (``config.model`` of a file in ``configs/``).

    ``config["kind"]`` selects the class (``"ssd"`` or ``"robustdet"``); every other key is a constructor
    argument.  An unknown key is refused with the list of accepted ones.
    """
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    kind = config.pop("kind", "ssd")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r} in the model config; choose one of {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[kind]
    accepted = constructor_keys(cls)
    unknown = sorted(set(config) - accepted - {"name"})
    if unknown:
        raise ValueError(
            f"model config has unknown key(s) {unknown} for kind {kind!r}; accepted keys: {sorted(accepted)}"
        )
    return cls(**config)
