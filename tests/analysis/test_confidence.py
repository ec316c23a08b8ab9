"""Confidence and per-attack loss changes: an attack that changes nothing changes no loss and no score; A_cls drives
loss_c up; the kept scores are exactly the detections above the threshold."""

from functools import partial

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.analysis.confidence import attack_statistics, summarize
from robustdet_tf.analysis.per_image import per_image_terms
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.evaluation.evaluate import attack_targets
from robustdet_tf.evaluation.protocol import attack_spec, make_protocol


def test_identity_attack_changes_nothing_and_A_cls_raises_loss_c(trained_ssd):
    model, batches = trained_ssd
    images = np.concatenate([x for x, _ in batches])
    detections = tf.function(model.detect)(images)
    scores = [s[: int(n)] for s, n in zip(detections["detection_scores"].numpy(), detections["num_detections"].numpy())]
    threshold = float(np.quantile(np.concatenate(scores), 0.75))  # the tiny model is not confident: keep its top 25%
    spec = attack_spec("A_cls", make_protocol("reference")).replace(steps=3)
    result = attack_statistics(model, batches, {"same": lambda m, x, t: x, "A_cls": partial(pgd, spec=spec)},
                               threshold)
    assert list(result["scores"]) == ["clean", "same", "A_cls"]
    np.testing.assert_array_equal(result["loss_change"]["same"], 0.0)
    np.testing.assert_array_equal(result["scores"]["same"], result["scores"]["clean"])
    change = result["loss_change"]["A_cls"]
    assert change.shape == (8, 2) and change[:, 1].mean() > 0  # the attack ascends loss_c
    # The clean terms are the per-image losses; the kept scores are the detections scoring >= the threshold.
    targets = {k: np.concatenate([t[k] for _, t in batches]) for k in ("boxes", "labels")}
    terms = tf.function(lambda x: per_image_terms(model, x, attack_targets(targets)))(images)
    np.testing.assert_allclose(result["terms"]["clean"], terms.numpy(), rtol=1e-5)
    kept = np.concatenate([s[s >= threshold] for s in scores])
    assert kept.size > 0
    np.testing.assert_allclose(np.sort(result["scores"]["clean"]), np.sort(kept), rtol=1e-6)
    np.testing.assert_array_equal(result["detections"]["clean"], [int((s >= threshold).sum()) for s in scores])
    summary = summarize(result)
    assert summary["confidence"]["clean"]["mean_score"] == pytest.approx(float(kept.mean()), rel=1e-5)
    assert summary["loss_change"]["A_cls"]["mean_loss_c"] == pytest.approx(float(change[:, 1].mean()), rel=1e-6)


def test_a_threshold_above_every_score_keeps_nothing(trained_ssd):
    model, batches = trained_ssd
    result = attack_statistics(model, batches, {}, score_threshold=1.01)
    assert result["scores"]["clean"].size == 0 and not result["detections"]["clean"].any()
    assert summarize(result)["confidence"]["clean"]["mean_score"] is None
