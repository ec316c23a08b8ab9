"""``--mode=import`` and ``--mode=export`` through the CLI functions: an official-format state dict goes in, the
model comes out as SavedModel / TFLite / .keras; existing files are never overwritten."""

import os

import numpy as np
import pytest
import tensorflow as tf
from ml_collections import ConfigDict

from robustdet_tf import cli
from robustdet_tf.importers.torch_import import to_state_dict
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD


def tiny_config():
    model = ConfigDict({"kind": "ssd", **TINY_SSD})
    return ConfigDict({"model": model, "train": {"steps": 1}})


@pytest.mark.slow
def test_import_then_export(tmp_path):
    source = SSD(**TINY_SSD)
    path = tmp_path / "official.npz"
    np.savez(path, **to_state_dict(source))
    workdir = tmp_path / "run"
    saved = cli.run_import(tiny_config(), str(workdir), str(path), printer=lambda *_: None)
    imported = cli.load_trained_model(str(workdir), tiny_config())
    x = tf.random.uniform([2, 64, 64, 3], 0, 255, seed=1)
    np.testing.assert_allclose(imported(x)["logits"].numpy(), source(x)["logits"].numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(FileExistsError):
        cli.run_import(tiny_config(), str(workdir), str(path), printer=lambda *_: None)
    assert os.path.exists(saved)

    out = tmp_path / "exports"
    paths = cli.run_export(tiny_config(), str(workdir), str(out), printer=lambda *_: None)
    assert all(os.path.exists(p) for p in paths.values())
    loaded = tf.saved_model.load(paths["saved_model"])
    dets = loaded.signatures["serving_default"](tf.zeros([1, 50, 70, 3], tf.uint8))
    assert dets["detection_boxes"].shape[-1] == 4


def test_import_needs_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="--checkpoint"):
        cli.run_import(tiny_config(), str(tmp_path), None)


def test_evaluate_uses_the_saved_model_and_refuses_other_classes(tmp_path):
    """A config whose image size differs from the workdir's model evaluates at the model's own size; a class list
    the model was not trained on is refused naming the key."""
    from tests.test_train import tiny_config

    config = tiny_config()
    config.train.steps = 1
    config.eval.update(attacks=("clean",), sample_images=0)
    config.data.eval_images = 4
    workdir = str(tmp_path / "run")
    cli.run_train(config, workdir, printer=lambda *_: None)
    other = tiny_config()
    other.eval.update(attacks=("clean",), sample_images=0)
    other.data.eval_images = 4
    with other.unlocked():
        other.model.image_size = 96
    results = cli.run_evaluate(other, workdir, printer=lambda *_: None)
    assert 0.0 <= results["models"]["run"]["clean"] <= 1.0
    other.data.num_classes = 3  # the shapes set then has 3 classes, the model 4
    with pytest.raises(ValueError, match="config.data.class_names"):
        cli.run_evaluate(other, workdir, printer=lambda *_: None)


def test_evaluate_on_the_demos_folder_evaluates_each_of_its_models(tmp_path):
    """``--mode=evaluate --workdir=runs/demo``: a folder of model folders (the demo's ssd/, ssd_at/, robustdet/) is
    one table of those models, as ``--mode=analyze`` reads it."""
    import shutil

    from tests.test_train import tiny_config

    config = tiny_config()
    config.train.steps = 1
    config.eval.update(attacks=("clean",), sample_images=0, gradient_check_images=0)
    config.data.eval_images = 4
    demo = tmp_path / "demo"
    cli.run_train(config, str(demo / "ssd"), printer=lambda *_: None)
    (demo / "ssd_at").mkdir()
    shutil.copy(demo / "ssd" / "model.keras", demo / "ssd_at" / "model.keras")
    results = cli.run_evaluate(config, str(demo), output_dir=str(tmp_path / "table"), printer=lambda *_: None)
    assert list(results["models"]) == ["ssd", "ssd_at"]
    assert results["models"]["ssd"]["clean"] == results["models"]["ssd_at"]["clean"]  # the same weights
