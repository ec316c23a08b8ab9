"""Run a model (optionally under an attack) over evaluation batches and score the detections.

The attack and the detection run together in one ``tf.function`` per batch — never one image at a time — and
only the finished detections leave the graph for the (numpy) metric accumulator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.behaviour import REFERENCE
from robustdet_tf.compiled import traced_once
from robustdet_tf.metrics.coco import COCOMetric
from robustdet_tf.metrics.voc import VOCMetric

AttackFn = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]


def make_metric(kind: str, class_names: Sequence[str], offsets: str = REFERENCE, **kwargs):
    """``voc07`` (11-point), ``voc`` (all-point) or ``coco`` accumulator."""
    if kind in ("voc07", "voc"):
        return VOCMetric(class_names, use_07_metric=kind == "voc07", offsets=offsets)
    if kind == "coco":
        return COCOMetric(class_names=class_names, **kwargs)
    raise ValueError(f"unknown metric {kind!r}; use 'voc07', 'voc' or 'coco'")


def attack_targets(targets: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """What an evaluation attack aims at: the boxes and labels of the non-difficult objects, as the reference does
    (difficult objects become padding, label -1)."""
    out = {"boxes": targets["boxes"], "labels": targets["labels"]}
    if "difficult" in targets:
        out["labels"] = tf.where(tf.logical_not(targets["difficult"]), targets["labels"], -1)
    return out


def detection_step(model: keras.Model, attack: AttackFn | None = None, jit_compile: bool = False):
    """A compiled ``(images, targets) → (detections, attacked images)`` function for one batch, traced once per
    batch shape (``compiled.traced_once``: a table makes one per cell without TensorFlow's retracing warnings)."""

    def step(images, targets):
        adv = images if attack is None else attack(model, images, attack_targets(targets))
        return model.detect(adv), adv

    compiled = traced_once(step, jit_compile=jit_compile)

    def call(images, targets: Mapping[str, Any]):
        return compiled(tf.convert_to_tensor(images, tf.float32), dict(targets))

    return call


def evaluate_detections(
    model: keras.Model,
    batches: tf.data.Dataset,
    metric,
    attack: AttackFn | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[tf.Tensor, tf.Tensor, dict], None] | None = None,
) -> dict[str, Any]:
    """Accumulate ``metric`` over ``batches`` (optionally attacked) and return ``metric.result()``.

    ``on_batch(clean_images, attacked_images, detections)`` lets callers keep samples for figures.
    """
    step = detection_step(model, attack)
    for i, (images, targets) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        detections, adv = step(images, targets)
        metric.update(detections, targets)
        if on_batch is not None:
            on_batch(images, adv, detections)
    return metric.result()
