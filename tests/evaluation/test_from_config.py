"""The robustness evaluation a config describes (``config.eval``, ``config.data``), as the CLI and the demo run it."""

import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs import demo
from robustdet_tf.data.shapes import SHAPES_CLASSES
from robustdet_tf.data.sources import load_source
from robustdet_tf.evaluation import robustness
from robustdet_tf.evaluation.from_config import eval_batches, evaluate_models
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD

NUM_EVAL = 5


def tiny_config() -> ConfigDict:
    """The demo config with 5 evaluation images of 48 px, batches of 2, a 64-px model and a quick protocol."""
    config = demo.get_config()
    config.data.image_size = 48  # the source's size; the batches are resized to the model's
    config.data.eval_images = NUM_EVAL
    config.data.max_boxes = 5
    config.model.image_size = TINY_SSD["image_size"]
    config.eval.batch_size = 2
    config.eval.metric = "voc"
    config.eval.attacks = ("clean", "A_cls")
    config.eval.overrides = {"pgd": {"steps": 1, "epsilon": 4.0}}
    config.eval.sample_images = 0
    return config


def test_eval_batches_follow_the_data_eval_and_model_sections():
    config = tiny_config()
    source, batches = eval_batches(config)
    assert source.num_examples == NUM_EVAL and source.class_names == SHAPES_CLASSES[: config.data.num_classes]
    sizes = []
    for images, targets in batches:
        assert tuple(images.shape[1:]) == (64, 64, 3)
        assert tuple(targets["boxes"].shape[1:]) == (5, 4) and tuple(targets["labels"].shape[1:]) == (5,)
        assert {"difficult", "image_id", "original_size"} <= set(targets)
        np.testing.assert_array_equal(targets["original_size"].numpy(), 48)
        sizes.append(int(images.shape[0]))
    assert sizes == [2, 2, 1]

    other = tiny_config().data
    other.eval_images = 3
    given = load_source(other, "eval")  # an explicit source wins over config.data
    source, batches = eval_batches(config, source=given)
    assert source is given and [int(images.shape[0]) for images, _ in batches] == [2, 1]


def test_the_config_protocol_merges_the_metric_settings_and_leaves_the_config_alone():
    """``--mode=evaluate``, ``--mode=attack`` and ``--mode=analyze`` read one protocol: the table spec's."""
    settings = tiny_config().eval
    spec = TableSpec.from_config(settings)
    assert spec.overrides == {"pgd": {"steps": 1, "epsilon": 4.0}, "metric": "voc", "voc_offsets": "corrected"}
    assert settings.overrides.to_dict() == {"pgd": {"steps": 1, "epsilon": 4.0}}
    plain = TableSpec.from_config(ConfigDict({"metric": "coco", "voc_offsets": "reference"}))  # no overrides key
    assert plain.overrides == {"metric": "coco", "voc_offsets": "reference"}
    merged = spec.resolved_protocol()
    assert merged["pgd"]["epsilon"] == 4.0 and merged["metric"] == "voc" and merged["voc_offsets"] == "corrected"


def test_evaluate_models_writes_and_prints_the_table_of_the_config(tmp_path):
    config = tiny_config()
    config.eval.batch_size = NUM_EVAL  # one batch: one trace per attack
    model = SSD(**{**TINY_SSD, "num_classes": config.model.num_classes}, max_detections=20)
    printed = []
    results = evaluate_models(config, {"tiny": model}, str(tmp_path), printer=printed.append)
    assert list(results["models"]["tiny"]) == ["clean", "A_cls"]
    assert results["num_images"] == NUM_EVAL
    protocol = results["protocol"]
    assert protocol["pgd"]["steps"] == 1 and protocol["pgd"]["epsilon"] == 4.0 and protocol["metric"] == "voc"
    assert protocol["voc_offsets"] == "corrected" and protocol["name"] == "reference"
    assert json.loads((tmp_path / "robustness.json").read_text()) == results
    assert printed[-1] == robustness.markdown_table(results)  # after a progress line per cell
    assert [line.split(":")[0] for line in printed[:-1]] == ["cell 1/2 (tiny, clean)", "cell 2/2 (tiny, A_cls)"]
    assert (tmp_path / "robustness.md").read_text() == printed[-1]
    assert results["table_spec"]["attacks"] == ["clean", "A_cls"]  # the spec the table was made with
    assert not (tmp_path / "samples").exists()  # sample_images = 0


def test_unknown_attack_in_the_config_is_refused(tmp_path):
    config = tiny_config()
    config.eval.attacks = ("clean", "A_cls", "FGSM")
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['FGSM'\]"):
        evaluate_models(config, {"tiny": SSD(**{**TINY_SSD, "num_classes": 5})}, str(tmp_path))
