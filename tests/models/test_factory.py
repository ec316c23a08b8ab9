"""``build_model``: config → model, the one place that maps ``kind`` to a class and refuses unknown keys."""

import inspect

import pytest
from ml_collections import ConfigDict

from robustdet_tf.models import build_model
from robustdet_tf.models.base import DetectionModelBase
from robustdet_tf.models.factory import MODEL_CLASSES, constructor_keys
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD


def test_constructor_keys_collect_every_class_up_to_keras_model():
    base = set(inspect.signature(DetectionModelBase.__init__).parameters) - {"self", "kwargs"}
    assert base <= constructor_keys(SSD) and base <= constructor_keys(RobustDet)
    assert {"adversarial", "clean_mix"} <= constructor_keys(SSD)
    assert {"num_kernels", "cfr", "aid_width", "adc", "seed"} <= constructor_keys(RobustDet)
    assert "aid_width" not in constructor_keys(SSD) and "clean_mix" not in constructor_keys(RobustDet)
    assert not {"self", "args", "kwargs", "trainable", "dtype"} & (constructor_keys(SSD) | constructor_keys(RobustDet))


def test_kind_selects_the_class_and_the_keys_reach_the_constructor(tiny_ssd_config):
    ssd = build_model({"kind": "ssd", **tiny_ssd_config, "match_threshold": 0.4, "name": "clean"})
    assert type(ssd) is SSD and ssd.name == "clean"
    assert (ssd.num_classes, ssd.image_size, ssd.match_threshold) == (4, 64, 0.4)
    default = build_model(dict(tiny_ssd_config))  # no kind: an SSD
    assert type(default) is SSD
    config = ConfigDict({"kind": "robustdet", **tiny_ssd_config, "aid_width": 4, "num_kernels": 2,
                         "adversarial": {"method": "cls", "steps": 3}})
    robust = build_model(config)  # configs are ConfigDicts; the caller's dict is not modified
    assert type(robust) is RobustDet and robust.num_kernels == 2 and robust.adversary.attack.steps == 3
    assert config.kind == "robustdet"
    assert set(MODEL_CLASSES) == {"ssd", "robustdet"}


def test_unknown_keys_are_refused_with_the_accepted_ones(tiny_ssd_config):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['widht'\] for kind 'ssd'") as info:
        build_model({"kind": "ssd", **tiny_ssd_config, "widht": 0.5})
    assert "'width'" in str(info.value) and "'clean_mix'" in str(info.value)  # the accepted keys are listed
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['aid_width', 'cfr'\] for kind 'ssd'"):
        build_model({"kind": "ssd", **tiny_ssd_config, "aid_width": 4, "cfr": True})  # RobustDet's keys


def test_unknown_kind_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown model kind 'yolo' in the model config; choose one of "
                                         r"\['robustdet', 'ssd'\]"):
        build_model({"kind": "yolo"})
