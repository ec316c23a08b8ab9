"""Adversarial images as files: attack an evaluation set, save clean and attacked pixels exactly, measure the drop.

Why exact pixels: a saved adversarial example is only evidence if it is the image that fooled the detector.  The
clean image is rounded to integer pixels *before* it is attacked, the attacked image is rounded and projected back
into the ε-ball of that integer image, and both are written as lossless PNGs of those uint8 values — so
``‖adv − clean‖∞ ≤ ε`` holds for the files, and the mAP reported is measured on exactly the saved pixels (reading
the files back gives the same numbers).  The images are at the model's input size (the evaluation pipeline
resizes them), which is where the attack happened.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.compiled import traced_once
from robustdet_tf.evaluation.evaluate import AttackFn, attack_targets
from robustdet_tf.evaluation.protocol import make_attack
from robustdet_tf.io import write_text


def attack_bound(attack_name: str, protocol: Mapping[str, Any]) -> float | None:
    """The L∞ bound the attack promises (``None`` for the reference's unbounded DAG)."""
    if attack_name == "DAG":
        d = protocol["dag"]
        return None if d["variant"] == "reference" else float(d["epsilon"])
    return float(protocol["pgd"]["epsilon"])


def quantised_attack_step(model: keras.Model, attack: AttackFn | None, epsilon: float | None):
    """A compiled ``(images, targets) → (clean uint8, adv uint8, clean detections, adv detections)`` step."""
    bound = None if epsilon is None else float(math.floor(epsilon))

    def step(images, targets):
        clean = tf.round(tf.clip_by_value(tf.cast(images, tf.float32), 0.0, 255.0))
        adv = clean if attack is None else attack(model, clean, attack_targets(targets))
        adv = tf.round(tf.clip_by_value(adv, 0.0, 255.0))
        if bound is not None:  # rounding must not leave the ε-ball of the integer clean image
            adv = tf.clip_by_value(adv, clean - bound, clean + bound)
        return tf.cast(clean, tf.uint8), tf.cast(adv, tf.uint8), model.detect(clean), model.detect(adv)

    return traced_once(step)


def _file_name(image_id: Any, index: int) -> str:
    text = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or f"{index:06d}"


def write_adversarial_set(
    model: keras.Model,
    batches: tf.data.Dataset,
    attack_name: str,
    protocol: Mapping[str, Any],
    metric_factory: Callable[[], Any],
    output_dir: str,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Attack ``batches`` with the protocol's ``attack_name``, write ``<image>_clean.png`` / ``<image>_<attack>.png``
    to ``output_dir`` and ``attack.json``; returns clean and attacked mAP, the drop and the measured ‖δ‖∞."""
    epsilon = attack_bound(attack_name, protocol)
    step = quantised_attack_step(model, make_attack(attack_name, protocol), epsilon)
    clean_metric, adv_metric = metric_factory(), metric_factory()
    written, linf, count = 0, 0, 0
    for images, targets in batches:
        if max_images is not None:
            if count >= max_images:
                break
            keep = max_images - count
            images, targets = images[:keep], {k: v[:keep] for k, v in targets.items()}
        clean, adv, clean_dets, adv_dets = step(images, targets)
        clean_metric.update(clean_dets, targets)
        adv_metric.update(adv_dets, targets)
        ids = targets["image_id"].numpy() if "image_id" in targets else [None] * int(clean.shape[0])
        diff = np.abs(clean.numpy().astype(np.int16) - adv.numpy().astype(np.int16))
        linf = max(linf, int(diff.max()) if diff.size else 0)
        for i in range(int(clean.shape[0])):  # file output, outside the compiled step
            stem = _file_name(ids[i] if ids[i] is not None else f"{count + i:06d}", count + i)
            for tag, pixels in (("clean", clean[i]), (attack_name, adv[i])):
                tf.io.write_file(os.path.join(output_dir, f"{stem}_{tag}.png"), tf.io.encode_png(pixels))
                written += 1
        count += int(clean.shape[0])
    clean_result, adv_result = clean_metric.result(), adv_metric.result()
    key = "mAP" if "mAP" in clean_result else "AP50"
    summary = {
        "attack": attack_name, "epsilon": epsilon, "linf": linf, "num_images": count, "files": written,
        "clean": float(clean_result[key]), "attacked": float(adv_result[key]),
        "drop": float(clean_result[key]) - float(adv_result[key]), "metric": key, "protocol": dict(protocol),
    }
    write_text(os.path.join(output_dir, "attack.json"), json.dumps(summary, indent=2, default=str) + "\n")
    return summary
