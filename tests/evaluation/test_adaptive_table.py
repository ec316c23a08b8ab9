"""The adaptive columns of the robustness table on a tiny RobustDet whose kernels depend on its AID's mixture."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.attacks.pgd import per_image_detection_loss
from robustdet_tf.evaluation import robustness
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.evaluation.test_robustness import CLASS_NAMES, NUM_IMAGES, SIZE, rectangles
from tests.helpers import train_on_detection_loss

pytestmark = pytest.mark.slow  # among the slowest files of the suite; the quick loop (-m "not slow") leaves it out

COLUMNS = ("clean", "A_cls", "Adaptive", "FixedPi", "AID", "Worst")


def eval_batches(images, targets):
    eval_targets = {**targets, "difficult": np.zeros_like(targets["labels"], bool),
                    "image_id": np.array([f"rect_{i}" for i in range(NUM_IMAGES)]),
                    "original_size": np.full((NUM_IMAGES, 2), SIZE, np.int32)}
    return tf.data.Dataset.from_tensor_slices((images, eval_targets)).batch(4)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A tiny RobustDet trained 60 steps on the rectangles (kernels and AID together), under the reference PGD-5."""
    keras.utils.set_random_seed(0)
    images, targets = rectangles(NUM_IMAGES, SIZE)
    model = RobustDet(**TINY_SSD, num_kernels=4, aid_width=8, pre_nms_top_k=50, max_detections=50, seed=0)
    model.build()
    train_on_detection_loss(model, images, targets, steps=60)
    folder = tmp_path_factory.mktemp("adaptive")
    results = robustness.evaluate_robustness({"robustdet": model}, eval_batches(images, targets), CLASS_NAMES,
                                             folder, TableSpec(attacks=COLUMNS, overrides={"pgd": {"steps": 5}},
                                                               plots=False))
    return results, folder


def test_adaptive_attack_lowers_map_about_as_much_as_a_cls(table):
    """Both attacks bring this toy near 0 mAP; which one ends lower by a detection depends on the kernels' last bits
    (measured: A_cls 0.0 and Adaptive 0.017 here, the other way round before the per-image kernel mixing), so
    Adaptive must do what A_cls does up to one detection's worth, not beat it."""
    results, _ = table
    cells = results["models"]["robustdet"]
    assert cells["clean"] > 0.6, cells
    assert cells["A_cls"] < cells["clean"] - 0.3, cells
    assert cells["Adaptive"] < cells["clean"] - 0.3, cells
    assert cells["Adaptive"] <= cells["A_cls"] + 0.05, cells


def test_worst_case_column_and_lowest_cell(table):
    results, folder = table
    cells = results["models"]["robustdet"]
    lowest = min((k for k in cells if k != "clean"), key=cells.get)
    worst = results["worst_case"]["robustdet"]
    assert {k: worst[k] for k in ("attack", "mAP")} == {"attack": lowest, "mAP": cells[lowest]}
    written = json.loads((folder / "robustness.json").read_text())
    assert written["worst_case"] == results["worst_case"] and list(written["models"]["robustdet"]) == list(COLUMNS)
    markdown = (folder / "robustness.md").read_text()
    assert "| Model | Clean | A_cls | Adaptive | Fixed π | AID only | Worst case | Lowest (attack) |" in markdown


def test_the_aid_column_does_not_apply_to_a_model_without_one(tmp_path):
    images, targets = rectangles(NUM_IMAGES, SIZE)
    ssd = SSD(**TINY_SSD)
    ssd.build()
    results = robustness.evaluate_robustness({"ssd": ssd}, eval_batches(images, targets), CLASS_NAMES, tmp_path,
                                             TableSpec(attacks=("clean", "AID"), max_batches=1, plots=False,
                                                       overrides={"pgd": {"steps": 1}}))
    assert results["models"]["ssd"]["AID"] is None and results["per_class_AP"]["ssd"]["AID"] == {}
    assert {k: results["worst_case"]["ssd"][k] for k in ("attack", "mAP")} == {"attack": None, "mAP": None}
    assert "| ssd |" in (tmp_path / "robustness.md").read_text() and "– |" in (tmp_path / "robustness.md").read_text()


def test_worst_keeps_per_image_the_attack_with_the_highest_loss():
    """By definition, not by luck: every image of the worst case has at least the loss of every component attack."""
    images, targets = rectangles(NUM_IMAGES, SIZE)
    ssd = SSD(**TINY_SSD)
    ssd.build()
    x, t = tf.constant(images[:4]), {k: tf.constant(v[:4]) for k, v in targets.items()}
    brighten = lambda m, im, tg: tf.clip_by_value(im + 8.0, 0.0, 255.0)  # noqa: E731
    cls = robustness.make_attack("A_cls", robustness.make_protocol("reference", {"pgd": {"steps": 1}}))
    worst = robustness.worst_case_attack([brighten, cls])(ssd, x, t)
    loss = lambda im: per_image_detection_loss(ssd, im, t).numpy()  # noqa: E731
    assert np.all(loss(worst) >= np.maximum(loss(brighten(ssd, x, t)), loss(cls(ssd, x, t))) - 1e-5)
    picked = [np.array_equal(worst[i], cls(ssd, x, t)[i]) or np.array_equal(worst[i], brighten(ssd, x, t)[i])
              for i in range(4)]
    assert all(picked)


def test_worst_needs_other_attacks():
    with pytest.raises(ValueError, match="'Worst' column needs other attack columns"):
        robustness.worst_case_attack([])
