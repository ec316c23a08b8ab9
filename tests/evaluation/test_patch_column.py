"""The Patch column: a patch fitted per model on training images, pasted on the evaluation images, written out."""

import json

import numpy as np
import pytest
from PIL import Image

from robustdet_tf.attacks.patch import PatchSpec, fit_universal_patch, patch_attack
from robustdet_tf.evaluation import robustness
from robustdet_tf.evaluation.evaluate import evaluate_detections, make_metric
from robustdet_tf.evaluation.table_spec import TableRun, TableSpec
from tests.conftest import TRAINED_CLASS_NAMES

PATCH = {"size": 0.25, "steps": 8, "step_size": 16.0, "batch_size": 4, "placement": "random", "seed": 1}


def test_the_patch_column_pastes_the_patch_fitted_on_the_training_images(trained_ssd, tmp_path):
    model, batches = trained_ssd
    train = batches  # the tiny set stands in for the training images
    spec = TableSpec(attacks=("clean", "Patch"), overrides={"patch": PATCH}, plots=False)
    results = robustness.evaluate_robustness({"ssd": model}, batches, TRAINED_CLASS_NAMES, tmp_path, spec,
                                             TableRun(patch_batches=train))
    fitted = fit_universal_patch(model, train, PatchSpec.from_dict(PATCH))
    attack = patch_attack(fitted, PatchSpec.from_dict(PATCH))
    alone = evaluate_detections(model, batches, make_metric("voc07", TRAINED_CLASS_NAMES), attack=attack)["mAP"]
    assert results["models"]["ssd"]["Patch"] == pytest.approx(alone, abs=1e-12)
    assert results["models"]["ssd"]["Patch"] < results["models"]["ssd"]["clean"]
    entry = results["patches"]["ssd"]
    assert entry["side"] == 16 and entry["spec"] == PatchSpec.from_dict(PATCH).to_dict()
    png = np.asarray(Image.open(tmp_path / entry["file"]))
    np.testing.assert_array_equal(png, np.clip(np.rint(fitted.numpy()), 0, 255).astype(np.uint8))
    assert json.loads((tmp_path / "robustness.json").read_text())["protocol"]["patch"] == {
        **PatchSpec().to_dict(), **PATCH}
    assert not (tmp_path / "shards").exists()


def test_the_patch_column_needs_training_images_and_a_valid_spec(trained_ssd, tmp_path):
    model, batches = trained_ssd
    with pytest.raises(ValueError, match="TableRun\\(patch_batches=...\\)"):
        robustness.evaluate_robustness({"ssd": model}, batches, TRAINED_CLASS_NAMES, tmp_path,
                                       TableSpec(attacks=("clean", "Patch"), plots=False))
    with pytest.raises(ValueError, match="patch size"):
        TableSpec(attacks=("clean", "Patch"), overrides={"patch": {"size": 1.5}})
    with pytest.raises(ValueError, match="fitted per model"):
        robustness.make_attack("Patch", robustness.make_protocol("reference"))
