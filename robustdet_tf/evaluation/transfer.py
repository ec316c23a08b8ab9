"""The ``Transfer`` column: every model evaluated on the A_cls images made against one source model.

Why: a defence that only hides its gradient (gradient masking) survives attacks computed on itself but not the
same attack computed on another model and transferred.  If a model's ``Transfer`` cell is far *below* its own
A_cls cell, its own gradient is not a reliable attack direction and its white-box numbers overstate it; the
standard check of Athalye et al. (2018) and Carlini et al. (2019).  Evaluated on the source itself, the column is
the source's A_cls cell exactly (tested).
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from robustdet_tf.evaluation.evaluate import AttackFn

TRANSFER_BASE = "A_cls"
"""The column whose attack is made against the transfer source."""


def transfer_attack(source: keras.Model, attack: AttackFn) -> AttackFn:
    """An attack that ignores the evaluated model and returns ``attack`` run against ``source``."""

    def attacked(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor]) -> tf.Tensor:
        del model  # the images are made against the source, whatever model is evaluated
        return tf.stop_gradient(attack(source, images, targets))

    return attacked


def same_cell(model_name: str, attack_name: str, source_name: str | None, attacks) -> str | None:
    """The column whose cell ``(model_name, attack_name)`` is, exactly: the source's ``Transfer`` cell is its own
    ``A_cls`` cell when the table has both (the same images, the same detections), so a table computes it once."""
    if attack_name == "Transfer" and model_name == source_name and TRANSFER_BASE in attacks:
        return TRANSFER_BASE
    return None
