"""Models: the one detector builder, the plain SSD, RobustDet and the AID."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras

from robustdet_tf.models.ssd import SSD


def _model_classes() -> dict[str, type]:
    # Imported here: robustdet.py imports this package's modules, so a top-level import would be circular.
    from robustdet_tf.models.robustdet import RobustDet

    return {"ssd": SSD, "robustdet": RobustDet}


def build_model(config: Mapping[str, Any]) -> keras.Model:
    """Build any model from its config (``config.model`` of a file in ``configs/``).

    ``config["kind"]`` selects the class (``"ssd"`` or ``"robustdet"``); every other key is a constructor
    argument.  An unknown key is refused with the list of accepted ones.
    """
    config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    kind = config.pop("kind", "ssd")
    classes = _model_classes()
    if kind not in classes:
        raise ValueError(f"unknown model kind {kind!r} in the model config; choose one of {sorted(classes)}")
    cls = classes[kind]


    accepted = set()
    for klass in cls.__mro__:
        if klass is keras.Model:
            break
        accepted |= set(inspect.signature(klass.__init__).parameters) - {"self", "args", "kwargs"}
    unknown = sorted(set(config) - accepted - {"name"})
    if unknown:
        raise ValueError(
            f"model config has unknown key(s) {unknown} for kind {kind!r}; accepted keys: {sorted(accepted)}"
        )
    return cls(**config)
