"""Config → model: the one place that maps ``config.model.kind`` to a class and checks the keys.

Why a module of its own: the trainer, the importer of official checkpoints and the tests all build models from a
config dict, and an unknown key must fail the same way everywhere (naming the key and the accepted ones).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras

from robustdet_tf.labels import num_classes_for, read_class_names
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD

MODEL_CLASSES: dict[str, type] = {"ssd": SSD, "robustdet": RobustDet}
INIT_KEYS = ("backbone_init",)
"""Model-config keys that say how a fresh model's weights start (``importers/backbone.py``), not what it is."""


def constructor_keys(cls: type) -> set[str]:
    """Every keyword argument the constructors of ``cls`` and its bases (up to ``keras.Model``) accept."""
    accepted: set[str] = set()
    for klass in cls.__mro__:
        if klass is keras.Model:
            break
        accepted |= set(inspect.signature(klass.__init__).parameters) - {"self", "args", "kwargs"}
    return accepted


def resolved_model_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The model config as a plain dict with its label map settled: ``class_names`` read (a tuple, or a text file
    of ``config.data.class_names``, which the experiment configs link here) and ``num_classes`` derived from it
    when not given (background + classes)."""
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    names = read_class_names(config.get("class_names"))
    config["class_names"] = names
    if "num_classes" in config or names is not None:  # else the constructor's default applies
        config["num_classes"] = num_classes_for(names, config.get("num_classes"))
    return config


def model_class(config: Mapping[str, Any]) -> type:
    """The class a model config's ``kind`` names (``"ssd"`` by default)."""
    kind = config.get("kind", "ssd")
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r} in the model config; choose one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind]


def is_routed(config: Mapping[str, Any]) -> bool:
    """Whether a model config builds a detector routed by an AID (RobustDet, RobustDet*)."""
    return bool(model_class(config).ROUTED)


def build_model(config: Mapping[str, Any]) -> keras.Model:
    """Build any model from its config (``config.model`` of a file in ``configs/``).

    ``config["kind"]`` selects the class (``"ssd"`` or ``"robustdet"``); every other key is a constructor
    argument.  An unknown key is refused with the list of accepted ones.  ``num_classes`` may be left ``None`` when
    ``class_names`` is given (see ``resolved_model_config``).
    """
    config = {k: v for k, v in resolved_model_config(config).items() if k not in INIT_KEYS}
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
