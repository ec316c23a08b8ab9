"""What attacks do to a detector's outputs: confidence of its detections (paper Fig. 7c) and per-image loss
changes per attack (paper Fig. 5).

Why both here: both come from the same attacked images — one attack per batch, then the detections and the
per-image losses of the attacked images in one ``tf.function``.  The confidence histogram shows *how* an attack
defeats a detector (A_cls leaves few confident detections; A_loc keeps confident but misplaced ones); the loss
change (loss on attacked − loss on clean, per image, split into loss_l and loss_c) shows which part of the loss an
attack drives up, and how much less it moves a robust model's.

What they do not show: whether the remaining detections are right (that is the mAP), nor attacks stronger than the
configured protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.analysis.per_image import per_image_terms
from robustdet_tf.compiled import traced_once
from robustdet_tf.evaluation.evaluate import AttackFn, attack_targets


def _step(model: keras.Model, attack: AttackFn | None, score_threshold: float):
    """Compiled ``(images, targets) → (scores [B, M], kept [B, M], terms [B, 2])`` under one attack."""

    def step(images, targets):
        aimed = attack_targets(targets)
        adv = images if attack is None else attack(model, images, aimed)
        detections = model.detect(adv)
        scores = detections["detection_scores"]
        count = tf.cast(tf.reshape(detections["num_detections"], [-1, 1]), tf.int32)
        valid = tf.range(tf.shape(scores)[1])[None, :] < count
        return scores, tf.logical_and(valid, scores >= score_threshold), per_image_terms(model, adv, aimed)

    return traced_once(step)


def attack_statistics(model: keras.Model, batches: Iterable, attacks: Mapping[str, AttackFn | None],
                      score_threshold: float = 0.3, max_batches: int | None = None) -> dict[str, Any]:
    """Per attack (``None`` = clean; ``clean`` is always added): ``scores`` of the detections scoring at least
    ``score_threshold`` (all images pooled), ``detections`` per image above it, ``terms`` ``[N, 2]`` per-image
    (loss_l, loss_c), and ``loss_change`` ``[N, 2]`` = terms under the attack − terms on the clean image."""
    attacks = {"clean": None, **{k: v for k, v in attacks.items() if k != "clean"}}
    steps = {name: _step(model, fn, float(score_threshold)) for name, fn in attacks.items()}
    scores = {name: [] for name in attacks}
    counts = {name: [] for name in attacks}
    terms = {name: [] for name in attacks}
    for i, (images, targets) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        for name, step in steps.items():
            s, kept, t = (v.numpy() for v in step(tf.convert_to_tensor(images, tf.float32), targets))
            scores[name].append(s[kept])
            counts[name].append(kept.sum(-1))
            terms[name].append(t)
    if not terms["clean"]:
        raise ValueError("attack statistics got no batches: give at least one (images, targets) batch.")
    terms = {name: np.concatenate(v) for name, v in terms.items()}
    return {
        "score_threshold": float(score_threshold),
        "scores": {name: np.concatenate(v) for name, v in scores.items()},
        "detections": {name: np.concatenate(v) for name, v in counts.items()},
        "terms": terms,
        "loss_change": {name: terms[name] - terms["clean"] for name in attacks if name != "clean"},
    }


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """Mean confidence and detections per image per attack; mean loss_l / loss_c / total change per attack."""
    confidence = {}
    for name, values in result["scores"].items():
        confidence[name] = {"mean_score": float(values.mean()) if values.size else None,
                            "detections_per_image": float(np.mean(result["detections"][name])),
                            "scores": values}
    changes = {}
    for name, change in result["loss_change"].items():
        changes[name] = {"mean_loss_l": float(change[:, 0].mean()), "mean_loss_c": float(change[:, 1].mean()),
                         "mean_total": float(change.sum(-1).mean()), "per_image": change}
    return {"score_threshold": result["score_threshold"], "confidence": confidence, "loss_change": changes}
