"""The robustness table: a tiny trained SSD whose mAP the attacks lower, protocols reaching the attacks, files."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from robustdet_tf.evaluation import robustness, samples
from robustdet_tf.evaluation.table_spec import TableRun, TableSpec
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.helpers import evaluation_batches, train_on_detection_loss

CLASS_NAMES = ("red", "green", "blue")
NUM_IMAGES, SIZE = 8, 64
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = {"pgd": {"steps": 2}, "dag": {"steps": 10}}  # PGD-2 and DAG-10 keep the test fast


def rectangles(n, size, seed=0):
    """One solid rectangle per image on a dark noisy background; its colour is its class (i mod 3)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (n, size, size, 3)).astype(np.float32)
    colours = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.float32)
    boxes = np.zeros((n, 2, 4), np.float32)
    labels = -np.ones((n, 2), np.int32)
    for i in range(n):
        w, h = rng.uniform(0.35, 0.6, 2)
        x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        px = np.round(np.array([x0, y0, x0 + w, y0 + h]) * size).astype(int)
        images[i, px[1] : px[3], px[0] : px[2]] = colours[i % 3]
        boxes[i, 0], labels[i, 0] = px / size, i % 3
    return images, {"boxes": boxes, "labels": labels}


@pytest.fixture(scope="module")
def trained():
    """A tiny SSD trained for 40 Adam steps on the 8 rectangles, and the same images as evaluation batches of 4."""
    keras.utils.set_random_seed(0)
    images, targets = rectangles(NUM_IMAGES, SIZE)
    model = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    model.build()
    train_on_detection_loss(model, images, targets, steps=40)
    return model, evaluation_batches(images, targets)


@pytest.mark.slow
def test_table_json_markdown_and_figures(trained, tmp_path):
    model, batches = trained
    results = robustness.evaluate_robustness(
        {"SSD (tiny)": model}, batches, CLASS_NAMES, tmp_path, TableSpec(overrides=QUICK, sample_images=1)
    )

    # JSON: the returned dict, the reference protocol with the overrides, mAP fractions for every attack.
    with open(tmp_path / "robustness.json", encoding="utf-8") as handle:
        written = json.load(handle)
    assert written == results
    assert set(written) >= {"protocol", "models"}
    proto = written["protocol"]
    assert proto["name"] == "reference" and proto["metric"] == "voc07"
    assert proto["pgd"] == {"epsilon": 8.0, "step_size": 8.0, "steps": 2, "random_start": False,
                            "con_weights": [1.0, 1.0], "mtd_per_image": True, "cwa_per_image": True, "restarts": 1,
                            "step_schedule": "constant"}
    assert proto["dag"] == {"steps": 10, "gamma": 0.5, "variant": "reference", "epsilon": None}
    cells = written["models"]["SSD (tiny)"]
    assert list(cells) == list(robustness.PAPER_ATTACKS)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in cells.values())
    assert written["num_images"] == NUM_IMAGES
    assert set(written["per_class_AP"]["SSD (tiny)"]["clean"]) == set(CLASS_NAMES)

    # The briefly trained model detects the rectangles; every PGD attack lowers its mAP clearly.
    assert cells["clean"] > 0.6
    for attack in ("A_cls", "A_loc", "con", "MTD", "CWA"):
        assert cells[attack] < cells["clean"] - 0.1, (attack, cells)

    # Markdown: Table 1 layout (rows models, columns attacks), mAP in % with one decimal.
    lines = (tmp_path / "robustness.md").read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Model |"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == [
        "Model", "Clean", "A_cls", "A_loc", "con", "MTD", "CWA", "DAG", "Lowest (attack)"]
    assert set(lines[header + 1]) <= set("|-:")
    row = [c.strip() for c in lines[header + 2].strip("|").split("|")]
    assert row[0] == "SSD (tiny)"
    intervals = written["cells"]["SSD (tiny)"]
    assert row[1:-1] == [f"{100 * cells[a]:.1f} [{100 * intervals[a]['ci_low']:.1f}, "
                         f"{100 * intervals[a]['ci_high']:.1f}]" for a in robustness.PAPER_ATTACKS]
    for attack, cell in intervals.items():  # each value with its 95 % bootstrap interval beside it
        assert cell["mAP"] == cells[attack] and cell["ci_low"] <= cell["mAP"] <= cell["ci_high"], attack
    assert written["bootstrap"]["resamples"] == 1000 and written["bootstrap"]["num_images"] == NUM_IMAGES
    lowest = min((a for a in cells if a != "clean"), key=cells.get)
    worst = written["worst_case"]["SSD (tiny)"]
    assert {k: worst[k] for k in ("attack", "mAP")} == {"attack": lowest, "mAP": cells[lowest]}
    assert worst["ci_low"] <= worst["mAP"] <= worst["ci_high"]
    assert row[-1].startswith(f"{100 * cells[lowest]:.1f} [") and row[-1].endswith(f"] ({lowest})")
    assert "PGD-2, ε = 8, α = 8, no random start" in "\n".join(lines[:header])

    # Figures: one PR plot per (model, attack), the bar plot, the first image of every attack; no temp files left.
    expected = [f"pr_SSD_tiny__{attack}.png" for attack in robustness.PAPER_ATTACKS] + ["robustness_bars.png"]
    expected += [f"samples/SSD_tiny__{attack}_0.png" for attack in robustness.PAPER_ATTACKS if attack != "clean"]
    for name in expected:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    with Image.open(tmp_path / "samples" / "SSD_tiny__A_cls_0.png") as sample:
        assert sample.width > sample.height  # clean | attacked side by side
    leftovers = [f for _, _, files in os.walk(tmp_path) for f in files if f.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.slow
def test_transfer_column_and_paired_differences(trained, tmp_path):
    """Transfer from model A evaluated on A is A's own A_cls cell; on another model it is A's images, not the other
    model's own attack; a model under two names differs from itself by exactly 0 with a zero-width interval."""
    model, batches = trained
    keras.utils.set_random_seed(1)
    other = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    other.build()
    images, targets = rectangles(NUM_IMAGES, SIZE)
    train_on_detection_loss(other, images, targets, steps=25)
    models = {"a": model, "a_again": model, "b": other}
    lines = []
    spec = TableSpec(attacks=("clean", "A_cls", "Transfer"), overrides=QUICK, bootstrap={"resamples": 200, "seed": 3})
    results = robustness.evaluate_robustness(models, batches, CLASS_NAMES, tmp_path, spec,
                                             TableRun(printer=lines.append))
    cells = results["models"]
    assert results["transfer_source"] == "a" and results["table_spec"] == spec.to_dict()
    # a_again's Transfer cell is computed (a's images, detected by the same weights) and equals a's A_cls cell
    # exactly, which is why the source's own Transfer cell is not computed again but read from its A_cls cell.
    assert cells["a"]["Transfer"] == cells["a"]["A_cls"] and cells["a_again"]["Transfer"] == cells["a"]["A_cls"]
    progress = [line for line in lines if line.startswith("cell ")]
    assert len(progress) == 8 and progress[-1].startswith("cell 8/8 (b, Transfer)")
    assert not any("(a, Transfer)" in line for line in progress)
    assert cells["b"]["Transfer"] != cells["b"]["A_cls"]  # b is scored on a's adversarial images, not its own

    differences = {(d["attack"], d["model_a"], d["model_b"]): d for d in results["differences"]}
    assert len(differences) == 4 * 3  # every attack and the lowest attacked cell, every pair of the three models
    for attack in ("clean", "A_cls", "Transfer", "Lowest"):
        same = differences[(attack, "a", "a_again")]
        assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
        gap = differences[(attack, "a", "b")]
        lowest = {m: results["worst_case"][m]["mAP"] for m in models}
        value = {m: lowest[m] if attack == "Lowest" else cells[m][attack] for m in models}
        assert gap["difference"] == pytest.approx(value["a"] - value["b"])
        assert gap["ci_low"] <= gap["difference"] <= gap["ci_high"]
    # The Lowest column takes Transfer into account.
    assert results["worst_case"]["b"]["mAP"] == min(cells["b"]["A_cls"], cells["b"]["Transfer"])
    markdown = (tmp_path / "robustness.md").read_text(encoding="utf-8")
    assert "| Transfer | a − a_again | +0.0 | [+0.0, +0.0] |" in markdown
    assert "Transfer: A_cls images made against a." in markdown
    assert (tmp_path / "robustness_bars.png").read_bytes().startswith(PNG_MAGIC)

    # A given seed gives the same intervals; the source must be a model of the table.
    again = robustness.evaluate_robustness(models, batches, CLASS_NAMES, tmp_path / "again",
                                           dataclasses.replace(spec, plots=False))
    assert again["cells"] == results["cells"] and again["differences"] == results["differences"]
    with pytest.raises(ValueError, match="transfer source 'c' is not one of the models"):
        robustness.evaluate_robustness(models, batches, CLASS_NAMES, tmp_path / "bad",
                                       TableSpec(attacks=("Transfer",), transfer_source="c"))


def test_protocol_reaches_the_attacks(trained, tmp_path):
    """ε = 0 makes A_cls a no-op (its column equals clean); the strong protocol's random start stays in the ε-ball."""
    model, batches = trained
    results = robustness.evaluate_robustness(
        {"m": model}, batches, CLASS_NAMES, tmp_path,
        TableSpec(attacks=("clean", "A_cls"), overrides={"pgd": {"steps": 1, "epsilon": 0.0}}, plots=False),
    )
    assert results["models"]["m"]["A_cls"] == results["models"]["m"]["clean"]
    assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(".")) == ["robustness.json", "robustness.md"]

    images, targets = next(iter(batches))
    targets = {"boxes": targets["boxes"], "labels": targets["labels"]}
    strong = robustness.make_attack("A_cls", robustness.make_protocol("strong", {"pgd": {"steps": 1}}))
    reference = robustness.make_attack("A_cls", robustness.make_protocol("reference", {"pgd": {"steps": 1}}))
    adv_strong = tf.function(strong)(model, images, targets)
    adv_reference = tf.function(reference)(model, images, targets)
    assert float(tf.reduce_max(tf.abs(adv_strong - images))) <= 8.0 + 1e-3
    moved = np.abs((adv_reference - images).numpy())
    steps_taken = set(np.unique(np.round(moved[(images.numpy() > 8) & (images.numpy() < 247)])))
    assert 8.0 in steps_taken and steps_taken <= {0.0, 8.0}  # one signed step of α = ε = 8
    assert float(tf.reduce_max(tf.abs(adv_strong - adv_reference))) > 1.0


def test_unknown_attack_column_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['PGD'\]"):
        robustness.evaluate_robustness({"m": None}, None, CLASS_NAMES, "/nonexistent",
                                       TableSpec(attacks=("clean", "PGD")))


def test_save_sample_detections(trained, tmp_path):
    model, batches = trained
    images, targets = next(iter(batches))
    brighten = lambda m, x, t: tf.clip_by_value(x + 40.0, 0.0, 255.0)  # noqa: E731
    paths = samples.save_sample_detections(
        model, images, targets, str(tmp_path), brighten, attack_name="brighten", class_names=CLASS_NAMES,
        num_images=2,
    )
    assert [os.path.basename(p) for p in paths] == ["brighten_0.png", "brighten_1.png"]
    for path in paths:
        with Image.open(path) as png:
            assert png.format == "PNG" and png.width > png.height
