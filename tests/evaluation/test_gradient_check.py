"""The gradient check: zero and non-finite input gradients are counted, and the attack's loss is followed step by
step (a trained SSD's A_cls loss rises; a model blind to its input has zero gradients and a flat loss)."""

import numpy as np
import pytest

from robustdet_tf.analysis.findings import findings
from robustdet_tf.analysis.run import DEFAULT_SETTINGS
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.evaluation import gradient_check as gc
from robustdet_tf.evaluation.evaluate import attack_targets

SPEC = AttackSpec(method="cls", epsilon=8.0, step_size=2.0, steps=4)


def _batches(dataset):
    return [(images, attack_targets(targets)) for images, targets in dataset]


def test_the_attack_climbs_on_a_trained_ssd(trained_ssd):
    model, dataset = trained_ssd
    out = gc.gradient_check(model, _batches(dataset), SPEC)
    assert out["num_images"] == 8 and out["steps"] == 4 and len(out["mean_loss_by_step"]) == 5
    assert out["zero_gradient"] == 0.0 and out["nonfinite_gradient"] == 0.0
    assert out["loss_rose"] >= 0.75 and out["mean_loss_by_step"][-1] > out["mean_loss_by_step"][0]
    losses = out["per_image"]["losses"]
    assert losses.shape == (8, 5)
    # the per-image objective at the clean image is the model's A_cls loss of that image alone
    images, targets = _batches(dataset)[0]
    first = model.detection_loss(model(images, training=False), targets, per_image=True)[1].numpy()
    np.testing.assert_allclose(losses[:4, 0], first, rtol=1e-5)


def test_a_model_blind_to_its_input_has_zero_gradients_and_a_flat_loss(trained_ssd):
    model, dataset = trained_ssd
    first = model.detector.all_convs()["vgg_0"]
    kernel = first.kernel.numpy()
    try:
        first.kernel.assign(np.zeros_like(kernel))
        out = gc.gradient_check(model, _batches(dataset), SPEC)
    finally:
        first.kernel.assign(kernel)
    assert out["zero_gradient"] == 1.0 and out["loss_rose"] == 0.0 and out["loss_never_fell"] == 1.0


def test_summary_counts_nan_losses_and_drops_and_the_finding_says_what_was_measured():
    losses = np.array([[1.0, 2.0, 3.0], [1.0, 0.5, 2.0], [1.0, np.nan, 2.0], [1.0, 1.0, 1.0]])
    out = gc.summarize(losses, np.array([False, False, False, True]), np.array([False, False, True, False]))
    assert (out["zero_gradient"], out["nonfinite_gradient"]) == (0.25, 0.25)
    assert out["loss_rose"] == 0.5 and out["loss_never_fell"] == 0.5  # the NaN row counts as neither
    assert out["mean_loss_by_step"] == pytest.approx([1.0, 3.5 / 3, 2.0])
    lines = findings({"gradient_check": {"ssd": {**out, "attack": "A_cls"}}}, DEFAULT_SETTINGS)
    assert lines == ["gradient check under A_cls (4 images, 2 PGD steps; % of images with a zero input gradient / "
                     "a NaN or inf gradient / a loss that rose / one that never fell): ssd 25/25/50/50"]


def test_the_table_writes_each_models_gradient_check(trained_ssd, tmp_path):
    from robustdet_tf.evaluation import robustness
    from robustdet_tf.evaluation.table_spec import TableSpec
    from tests.conftest import TRAINED_CLASS_NAMES

    model, dataset = trained_ssd
    spec = TableSpec(attacks=("clean",), overrides={"pgd": {"steps": 3, "step_size": 2.0}}, plots=False,
                     gradient_check_images=6)
    results = robustness.evaluate_robustness({"ssd": model}, dataset, TRAINED_CLASS_NAMES, tmp_path, spec)
    check = results["gradient_check"]["ssd"]
    assert check["attack"] == "A_cls" and check["num_images"] == 6 and check["steps"] == 3
    assert check["nan_guard"] is False and check["zero_gradient"] == 0.0 and check["nonfinite_gradient"] == 0.0
    alone = gc.gradient_check(model, _batches(dataset), AttackSpec(method="cls", epsilon=8.0, step_size=2.0, steps=3),
                              max_images=6)
    assert check["mean_loss_by_step"] == pytest.approx(alone["mean_loss_by_step"])
    assert "gradient_check" not in robustness.evaluate_robustness(
        {"ssd": model}, dataset, TRAINED_CLASS_NAMES, tmp_path / "none", TableSpec(attacks=("clean",), plots=False))
