"""A gradient check beside the robustness table: are the attacks' gradients usable, and does the attack climb?

Why: a defence can look robust because its input gradients are zero, NaN or infinite (gradient masking), not
because its detections resist.  The check runs the table's PGD attack step by step and records, per image, whether
the input gradient of the attack's objective is zero everywhere or holds a NaN/inf at any step, and how the
objective moves along the steps.  A usable attack makes the loss rise; one whose loss stays flat or falls on many
images points to masked gradients (ART's ``loss_gradient_check`` asks the same questions of a classifier).

The objective is the attack's own, per image (A_cls: the confidence loss of each image); the steps run in one
graph loop per batch.  The table reports it per model in ``robustness.json`` (``gradient_check``, with
``eval.gradient_check_images``); ``--mode=analyze`` draws it.  The NaN guard: RobustDet
replaces NaN activations by 0 in the trunk's ReLUs as the reference does (``models/detector.py``), which turns a
NaN forward pass into a finite one and its gradient into zeros there, so this check counts such images as zero or
partly zero gradients, not as NaN; the plain SSD has no guard and shows NaN as NaN.  Nothing is logged by the
guard itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.attacks.budget import project
from robustdet_tf.attacks.objectives import OBJECTIVES, make_per_image_objective
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.compiled import traced_once
from robustdet_tf.evaluation.evaluate import attack_targets
from robustdet_tf.evaluation.protocol import attack_spec

_RISE_TOLERANCE = 1e-6
"""A step counts as not lowering the loss if it drops by at most this fraction of the loss (float noise)."""


def _check_fn(model: keras.Model, spec: AttackSpec):
    """A compiled ``(clean, targets) → ([B, steps + 1] objective, [B] zero gradient at the clean image, [B] a NaN/inf
    gradient at any step)``: the attack's steps in one graph loop, traced once per batch shape."""
    objective = make_per_image_objective(spec.method if spec.method in OBJECTIVES else "cls", spec.con_weights)
    steps = int(spec.steps)

    def value_and_flags(adv, targets):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            value = objective(model, adv, targets)
            total = tf.reduce_sum(value)  # each image's gradient is that of its own objective
        grad = tape.gradient(total, adv)
        flat = tf.reshape(grad, [tf.shape(grad)[0], -1])
        zero = tf.reduce_all(tf.equal(flat, 0.0), axis=1)
        nonfinite = tf.reduce_any(tf.logical_not(tf.math.is_finite(flat)), axis=1)
        return value, grad, zero, nonfinite

    def check(clean, targets):
        value, grad, zero, nonfinite = value_and_flags(clean, targets)
        trail = tf.TensorArray(tf.float32, size=steps + 1).write(0, value)

        def body(index, adv, grad, trail, nonfinite):
            finite = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
            adv = tf.stop_gradient(project(adv + spec.step_size * tf.sign(finite), clean, spec.epsilon))
            value, grad, _, bad = value_and_flags(adv, targets)
            return index + 1, adv, grad, trail.write(index, value), tf.logical_or(nonfinite, bad)

        _, _, _, trail, nonfinite = tf.while_loop(
            lambda index, *_: index <= steps, body, (tf.constant(1), clean, grad, trail, nonfinite))
        return tf.transpose(trail.stack()), zero, nonfinite

    return traced_once(check)


def gradient_check(model: keras.Model, batches: Iterable[tuple[Any, Any]], spec: AttackSpec,
                   max_images: int | None = None) -> dict[str, Any]:
    """Run ``spec.steps`` PGD steps of ``spec`` (no random start) on the ``(images, attack targets)`` batches (the
    first ``max_images`` images, all if ``None``); per image the objective at every iterate ``[N, steps + 1]`` and
    the gradient flags, and their summary."""
    check = _check_fn(model, spec)
    losses, zero_first, nonfinite_any = [], [], []
    seen = 0
    for images, targets in batches:
        if max_images is not None and seen >= max_images:
            break
        trail, zero, nonfinite = check(tf.convert_to_tensor(images, tf.float32), targets)
        keep = None if max_images is None else max_images - seen
        losses.append(trail.numpy()[:keep])
        zero_first.append(zero.numpy()[:keep])
        nonfinite_any.append(nonfinite.numpy()[:keep])
        seen += len(losses[-1])
    if not losses:
        raise ValueError("gradient_check: no images to check (empty batches or max_images = 0).")
    return summarize(np.concatenate(losses), np.concatenate(zero_first), np.concatenate(nonfinite_any))


def summarize(losses: np.ndarray, zero: np.ndarray, nonfinite: np.ndarray) -> dict[str, Any]:
    """Fractions of images: zero input gradient at the clean image, a NaN/inf gradient at any step, a final loss
    above the clean one, a loss that never fell along the steps; and the mean loss per step."""
    losses = np.asarray(losses, np.float64)
    finite = np.all(np.isfinite(losses), axis=1)
    drops = np.diff(losses, axis=1) < -_RISE_TOLERANCE * np.maximum(np.abs(losses[:, :-1]), 1e-12)
    return {
        "num_images": int(len(losses)),
        "steps": int(losses.shape[1] - 1),
        "zero_gradient": float(np.mean(zero)),
        "nonfinite_gradient": float(np.mean(nonfinite)),
        "loss_rose": float(np.mean(finite & (losses[:, -1] > losses[:, 0]))),
        "loss_never_fell": float(np.mean(finite & ~np.any(drops, axis=1))),
        "mean_loss_by_step": [float(v) for v in np.nanmean(np.where(np.isfinite(losses), losses, np.nan), axis=0)],
        "per_image": {"losses": losses, "zero_gradient": np.asarray(zero), "nonfinite_gradient": np.asarray(nonfinite)},
    }


def finding(results: dict[str, dict[str, Any]], attack: str) -> list[str]:
    """One line: per model the fractions of images with zero / non-finite gradients and a loss that rose."""
    if not results:
        return []
    first = next(iter(results.values()))
    attack = first.get("attack", attack)
    return [f"gradient check under {attack} ({first['num_images']} images, {first['steps']} PGD steps; % of images "
            "with a zero input gradient / a NaN or inf gradient / a loss that rose / one that never fell): " +
            ", ".join(f"{name} {100 * r['zero_gradient']:.0f}/{100 * r['nonfinite_gradient']:.0f}/"
                      f"{100 * r['loss_rose']:.0f}/{100 * r['loss_never_fell']:.0f}" for name, r in results.items())]


def table_gradient_checks(models: Mapping[str, keras.Model], batches: Iterable[tuple[Any, Any]],
                          protocol: Mapping[str, Any], images: int) -> dict[str, dict[str, Any]]:
    """``robustness.json``'s ``gradient_check``: per model, the check of the table's A_cls attack on its first
    ``images`` evaluation images, and whether the model's forward pass replaces NaN activations by 0 (RobustDet's
    reference guard, which turns a NaN into a zero gradient there and logs nothing)."""
    spec = attack_spec("A_cls", protocol)
    attacked = [(images_, attack_targets(targets)) for images_, targets in batches]
    out = {}
    for name, model in models.items():
        summary = gradient_check(model, attacked, spec, images)
        out[name] = {"attack": "A_cls", **{k: v for k, v in summary.items() if k != "per_image"},
                     "nan_guard": model.capabilities().nan_guard}
    return out
