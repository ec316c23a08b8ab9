"""A new user's own data, from the command-line functions alone: a one-class VOC-format folder of any name (with
background-only images) and a tiny COCO json, class list from a text file, trained, evaluated, attacked, exported."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from configs import ssd300_coco, ssd300_voc
from robustdet_tf import cli
from robustdet_tf.evaluation.evaluate import make_metric
from robustdet_tf.evaluation.from_config import eval_batches
from tests.conftest import TINY_SSD
from tests.data.fake_datasets import FakeAnnotation, FakeCocoImage, FakeObject, FakeVocImage, write_coco, write_voc_tree

QUIET = dict(printer=lambda *_: None)


def _tiny(config, steps=2):
    with config.unlocked():
        config.model.update({k: v for k, v in TINY_SSD.items() if k != "num_classes"})
    config.train.update(steps=steps, batch_size=4, checkpoint_every=steps, log_every=1)
    config.eval.update(batch_size=4, attacks=("clean", "A_cls"), sample_images=1)
    config.eval.overrides = {"pgd": {"steps": 2}}
    return config


def _tree_folder(tmp_path):
    """``aerial_trees/`` in VOC format: 6 train images (2 without any object) and 4 test images (1 without)."""
    def images(prefix, n, empty):
        return [FakeVocImage(f"{prefix}{i}", objects=[] if i < empty else
                             [FakeObject("Tree", (3 + 2 * i, 4, 30 + i, 25)), FakeObject("tree", (34, 20, 60, 46))])
                for i in range(n)]

    tree = write_voc_tree(tmp_path / "devkit", split="trainval", images=images("t", 6, 2))
    write_voc_tree(tmp_path / "devkit", split="test", images=images("e", 4, 1), seed=1)
    folder = tmp_path / "aerial_trees"
    (tree.root / "VOC2007").rename(folder)
    classes = tmp_path / "classes.txt"
    classes.write_text("# my survey\nTree\n")
    return folder, classes


@pytest.mark.slow
def test_one_class_voc_folder_from_training_to_attacked_pixels(tmp_path):
    folder, classes = _tree_folder(tmp_path)
    config = _tiny(ssd300_voc.get_config())
    config.data.update(source="local", root=str(folder), train_years="2007", eval_years="2007", max_boxes=4)
    config.data.class_names = (str(classes),)  # what --config.data.class_names=classes.txt gives
    workdir = str(tmp_path / "run")
    cli.run_train(config, workdir, **QUIET)
    model = keras.saving.load_model(os.path.join(workdir, "model.keras"))
    assert model.num_classes == 2 and model.class_names == ("tree",)  # derived and saved with the model

    lines = []
    results = cli.run_evaluate(config, workdir, printer=lines.append)
    assert list(results["per_class_AP"]["run"]["clean"]) == ["tree"]
    assert os.path.exists(os.path.join(workdir, "evaluation", "robustness.json"))
    assert os.listdir(os.path.join(workdir, "evaluation", "samples"))
    cli.run_evaluate(config, workdir, **QUIET)  # a second evaluation never replaces the first
    assert os.path.exists(os.path.join(workdir, "evaluation_2", "robustness.json"))
    with pytest.raises(FileExistsError, match="already holds results"):
        cli.run_evaluate(config, workdir, output_dir=os.path.join(workdir, "evaluation"), **QUIET)

    lines = []
    summary = cli.run_attack(config, workdir, printer=lines.append)
    _check_attack_files(config, model, os.path.join(workdir, "adversarial"), summary)
    assert "drop" in lines[-1] and "‖adv − clean‖∞ = " in lines[-1]

    paths = cli.run_export(config, workdir, str(tmp_path / "exports"), **QUIET)
    with open(os.path.join(paths["saved_model"], "labels.txt")) as f:
        assert f.read() == "tree\n"
    with open(paths["tflite_float32"][: -len(".tflite")] + ".json") as f:
        assert json.load(f)["class_names"] == ["tree"]


def _check_attack_files(config, model, folder, summary):
    """The PNGs are the evaluation images rounded to integers and their attacked versions within ε = 8 levels,
    and the mAP the attack printed is what the saved pixels give."""
    source, batches = eval_batches(config)
    images, targets = next(iter(batches))
    ids = [i.decode() for i in targets["image_id"].numpy()]
    assert summary["num_images"] == 4 and summary["files"] == 8 and summary["epsilon"] == 8.0
    clean = np.stack([tf.io.decode_png(tf.io.read_file(os.path.join(folder, f"{i}_clean.png"))).numpy() for i in ids])
    adv = np.stack([tf.io.decode_png(tf.io.read_file(os.path.join(folder, f"{i}_A_cls.png"))).numpy() for i in ids])
    np.testing.assert_array_equal(clean, np.round(np.clip(images.numpy(), 0, 255)).astype(np.uint8))
    linf = np.abs(adv.astype(int) - clean.astype(int)).max()
    assert 0 < linf <= 8 and linf == summary["linf"]
    for pixels, key in ((clean, "clean"), (adv, "attacked")):
        metric = make_metric("voc07", source.class_names)
        metric.update(model.detect(tf.constant(pixels, tf.float32)), targets)
        assert abs(metric.result()["mAP"] - summary[key]) < 1e-9
    with open(os.path.join(folder, "attack.json")) as f:
        assert json.load(f)["drop"] == pytest.approx(summary["clean"] - summary["attacked"])


def _coco_folder(tmp_path):
    images = [FakeCocoImage(i, annotations=[FakeAnnotation(4 if i % 2 else 7, (2.0 + i, 3.0, 20.0, 18.0))])
              for i in range(1, 7)]
    return write_coco(tmp_path / "coco", split="train2017", images=images, unannotated_images=2,
                      categories=[(4, "tree"), (7, "bush"), (9, "rock")]).root


def test_coco_json_with_a_class_list_and_background_images_trains(tmp_path):
    root = _coco_folder(tmp_path)
    config = _tiny(ssd300_coco.get_config(), steps=1)
    config.model.num_classes = None  # follows the class list
    config.data.update(source="local", root=str(root), train_split="train2017", background_images="keep",
                       max_boxes=4, augment=False)
    config.data.class_names = ("bush", "tree")
    model = cli.run_train(config, str(tmp_path / "run"), **QUIET)
    assert model.num_classes == 3 and model.class_names == ("bush", "tree")


def test_more_coco_categories_than_classes_is_refused_before_training(tmp_path):
    root = _coco_folder(tmp_path)
    config = _tiny(ssd300_coco.get_config(), steps=1)
    config.model.num_classes = 3  # the json has 3 categories: background + 3 need 4
    config.data.update(source="local", root=str(root), train_split="train2017", max_boxes=4)
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"has 3 classes but .* num_classes=3 .*config.model.num_classes=4"):
        cli.run_train(config, str(workdir), **QUIET)
    assert not (workdir / "checkpoints").exists()


def test_an_imported_model_is_where_training_starts_and_is_kept(tmp_path):
    from robustdet_tf.importers.torch_import import to_state_dict
    from robustdet_tf.models.ssd import SSD

    config = _tiny(ssd300_voc.get_config(), steps=1)
    folder, _ = _tree_folder(tmp_path)
    config.data.update(source="local", root=str(folder), max_boxes=4)
    config.data.class_names = ("tree",)
    official = SSD(**dict(TINY_SSD, num_classes=2))
    np.savez(tmp_path / "official.npz", **to_state_dict(official))
    workdir = tmp_path / "run"
    cli.run_import(config, str(workdir), str(tmp_path / "official.npz"), **QUIET)
    lines = []
    trained = cli.run_train(config, str(workdir), printer=lines.append)
    assert any("starting from the imported model" in line for line in lines)
    kept = keras.saving.load_model(workdir / "imported_model.keras")
    for a, b in zip(kept.get_weights(), official.get_weights()):
        np.testing.assert_array_equal(a, b)
    moved = max(np.abs(a - b).max() for a, b in zip(trained.get_weights(), official.get_weights()))
    assert 0 < moved < 0.1  # one SGD step away from the imported weights, not from a fresh init


def test_a_run_reports_its_data_model_weights_and_schedule_and_evaluation_its_progress(tmp_path):
    """Issue 28: training starts with one block saying what it trains on and from where; evaluation reports each
    finished cell with the table's time left."""
    folder, classes = _tree_folder(tmp_path)
    config = _tiny(ssd300_voc.get_config())
    # The paper's selection on one folder: both years resolve to it, and it is read once.
    config.data.update(source="local", root=str(folder), train_years="2007+2012", eval_years="2007", max_boxes=4)
    config.data.class_names = (str(classes),)
    workdir = str(tmp_path / "run")
    lines = []
    cli.run_train(config, workdir, printer=lines.append)
    block = lines[lines.index("== run ==") + 1:][:5]
    assert block[0] == f"training data: VOC2007 trainval (local {folder}): 6 images (2 without objects), 8 objects"
    assert block[1] == "classes (1), objects each: tree 8"
    assert block[2].startswith("model: ssd (VGG16 trunk, width ") and "2 classes with background" in block[2]
    assert f"{keras.saving.load_model(os.path.join(workdir, 'model.keras')).count_params() / 1e6:.2f} M" in block[2]
    assert block[3] == "weights from: random: the layers' initialisers, seed 0"
    assert block[4].startswith("schedule: 2 steps, batch 4, sgd at 0.001, momentum 0.9")

    lines = []
    cli.run_evaluate(config, workdir, printer=lines.append)
    cells = [line for line in lines if line.startswith("cell ")]
    assert cells[0].startswith("cell 1/2 (run, clean): 4 images in ") and "table ETA" in cells[0]
    assert cells[1].startswith("cell 2/2 (run, A_cls): 4 images in ") and cells[1].endswith("all cells done")

    lines = []
    cli.run_train(config, workdir, printer=lines.append)  # nothing left to train: no report
    assert "== run ==" not in lines
