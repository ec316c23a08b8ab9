"""Tests of config → source: every family and reader, and clear refusals."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

from robustdet_tf.data import sources
from tests.data.fake_datasets import default_voc_images, write_coco, write_voc_tree


def _shapes_config(**over):
    config = {"dataset": "shapes", "image_size": 32, "num_classes": 2, "max_objects": 2,
              "train_images": 3, "train_seed": 1, "eval_images": 2, "eval_seed": 9}
    config.update(over)
    return config


def test_shapes_source_per_role():
    train = sources.load_source(_shapes_config(), "train")
    evaluation = sources.load_source(_shapes_config(), "eval")
    assert train.num_examples == 3 and evaluation.num_examples == 2
    assert len(list(train.dataset)) == 3 and len(train.class_names) == 2
    assert "seed 1" in train.name and "seed 9" in evaluation.name


def test_local_voc_and_coco_sources(tmp_path):
    write_voc_tree(tmp_path / "voc", images=default_voc_images(2))
    voc = sources.load_source({"dataset": "voc", "source": "local", "root": str(tmp_path / "voc"),
                               "eval_years": "2007", "eval_split": "trainval"}, "eval")
    assert voc.num_examples == 2 and len(list(voc.dataset)) == 2
    write_coco(tmp_path / "coco")
    coco = sources.load_source({"dataset": "coco", "source": "local", "root": str(tmp_path / "coco"),
                                "eval_split": "val2017"}, "eval")
    assert len(list(coco.dataset)) == coco.num_examples == 3


def test_refusals_name_the_key():
    with pytest.raises(ValueError, match="role"):
        sources.load_source(_shapes_config(), "test")
    with pytest.raises(ValueError, match="config.data.dataset='imagenet'"):
        sources.load_source(_shapes_config(dataset="imagenet"), "train")
    with pytest.raises(ValueError, match="config.data.root"):
        sources.load_source({"dataset": "coco", "source": "local", "train_split": "train2017"}, "train")
