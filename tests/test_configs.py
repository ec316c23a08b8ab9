"""Every experiment config builds its model (small stand-ins where the full model would be slow) and is data."""

import importlib
import pathlib

import pytest

from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models import build_model
from robustdet_tf.models.adversarial import AdversarialSchedule
from robustdet_tf.priors import SSD300_COCO, SSD300_VOC, PriorSpec

CONFIGS = sorted(p.stem for p in pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_builds_a_model(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert {"model", "data", "train", "eval"} <= set(config.keys())
    model_config = config.model.to_dict()
    if model_config["image_size"] == 300:  # build the same structure narrower: the full model is tested elsewhere
        model_config["width"] = 1 / 16
        if model_config["kind"] == "robustdet":
            model_config.update(aid_width=4, decoder_width=16)
    model = build_model(model_config)
    names = config.data.get("class_names", None)
    assert model.num_classes == (config.model.num_classes or len(names) + 1)
    assert model.class_names == (None if names is None else tuple(names))
    if config.data.dataset == "voc":
        assert model.num_classes == 21 and len(model.class_names) == 20
    if "adversarial" in model_config:
        assert model.adversary.attack.method == model_config["adversarial"]["method"]


def test_one_class_list_sets_the_model_classes_everywhere():
    """``--config.data.class_names`` is the one key: the model's label map follows it, and num_classes with it."""
    config = importlib.import_module("configs.ssd300_voc").get_config()
    config.data.class_names = ("tree",)
    assert config.model.class_names == ("tree",)
    model_config = dict(config.model.to_dict(), width=1 / 16)
    model = build_model(model_config)
    assert model.num_classes == 2 and model.class_names == ("tree",)
    with pytest.raises(ValueError, match="config.model.num_classes=1 is too small"):
        build_model(dict(model_config, num_classes=1))


def test_paper_configs_follow_the_reference():
    voc = importlib.import_module("configs.robustdet_voc").get_config()
    assert voc.model.num_kernels == 4 and voc.model.adversarial.method == "mtd"
    assert voc.model.adversarial.epsilon == voc.model.adversarial.step_size == 8.0
    assert voc.train.steps == 40_000 and voc.train.learning_rate == 1e-3 and voc.train.momentum == 0.9
    assert importlib.import_module("configs.robustdet_cfr_voc").get_config().model.cfr
    assert importlib.import_module("configs.cwat_voc").get_config().model.adversarial.method == "cwa"


def test_demo_compares_robustdet_and_ssd_at_on_equal_terms():
    """The demo's claim rests on SSD-AT getting RobustDet's adversarial schedule, optimiser and budget."""
    config = importlib.import_module("configs.demo").get_config()
    assert config.robustdet.model.adversarial == config.ssd_at.model.adversarial
    assert config.robustdet.train.to_dict() == config.ssd_at.train.to_dict()
    adversarial = config.robustdet.model.adversarial
    assert (adversarial.method, adversarial.epsilon, adversarial.step_size) == ("cls", 2.0, 2.0)
    assert adversarial.schedule == "interleaved" and config.robustdet.train.steps % adversarial.steps == 0


@pytest.mark.parametrize("name, spec", [("ssd300_voc", SSD300_VOC), ("robustdet_voc", SSD300_VOC),
                                        ("ssd300_coco", SSD300_COCO), ("robustdet_coco", SSD300_COCO)])
def test_configs_take_priors_from_the_one_prior_spec(name, spec):
    model = importlib.import_module(f"configs.{name}").get_config().model
    assert PriorSpec.from_dict(model.to_dict()) == PriorSpec(**{k: getattr(spec, k) for k in PriorSpec.KEYS})
    assert PriorSpec.from_dict(model.to_dict()).with_feature_maps(300, spec.feature_maps) == spec


@pytest.mark.parametrize("name", CONFIGS)
def test_adversarial_config_keys_are_attack_spec_keys(name):
    model = importlib.import_module(f"configs.{name}").get_config().model
    if "adversarial" not in model:
        return
    settings = model.adversarial.to_dict()
    assert set(settings) == (set(AttackSpec.keys()) - {"seed"}) | {"schedule"}
    schedule = AdversarialSchedule.from_config(settings, seed=3)
    assert schedule.attack == AttackSpec(**{k: v for k, v in settings.items() if k != "schedule"}, seed=3)
    assert schedule.schedule == settings["schedule"]


def test_model_defaults_are_written_once_in_the_constructors():
    """The VOC configs take every model default from the SSD / RobustDet constructors (the values the reference
    uses: docs/reference.md#the-detector, #aaconv), so changing a default in one place changes it everywhere."""
    import inspect

    from configs import common, robustdet_voc, ssd300_voc
    from robustdet_tf.models.robustdet import RobustDet
    from robustdet_tf.models.ssd import SSD

    ssd_model, robustdet = ssd300_voc.get_config().model, robustdet_voc.get_config().model
    for key, value in common.constructor_defaults(SSD, common.SSD_KEYS).items():
        assert ssd_model[key] == value and robustdet[key] == value, key
    for key, value in common.constructor_defaults(RobustDet, common.ROBUSTDET_KEYS).items():
        assert robustdet[key] == value, key
    assert (ssd_model.image_size, ssd_model.mean, ssd_model.weight_decay, ssd_model.nms_iou_threshold) == (
        300, (104.0, 117.0, 123.0), 5e-4, 0.45)
    assert (robustdet.num_kernels, robustdet.aid_width, robustdet.triplet_margin) == (4, 64, 0.6)
    base_defaults = inspect.signature(SSD.__mro__[1].__init__).parameters
    assert base_defaults["weight_decay"].default == ssd_model.weight_decay  # read from the base class


def test_the_demo_states_only_the_robustdet_settings_it_changes(monkeypatch):
    """The demo's RobustDet stage reads its settings from the constructor (through ``common``) and writes only the
    AID's and the decoder's widths: a changed constructor default reaches every other key."""
    from configs import common, demo

    real = common.constructor_defaults

    def marked(cls, names):
        found = real(cls, names)
        return {k: f"default {v!r}" for k, v in found.items()} if cls.__name__ == "RobustDet" else found

    monkeypatch.setattr(common, "constructor_defaults", marked)
    model = demo.get_config().robustdet.model
    from_constructor = {k for k, v in model.items() if isinstance(v, str) and v.startswith("default ")}
    assert from_constructor == {*common.ROBUSTDET_KEYS, "cfr"} - {"aid_width", "decoder_width"}
    assert (model.aid_width, model.decoder_width) == (8, 64)


def test_aid_weight_is_a_robustdet_config_key():
    """``--config.model.aid_weight=0`` (the paper's ablation without L_aid) is accepted by the RobustDet configs, with
    the constructor's default 3, and the demo's RobustDet stage carries it too."""
    from absl import flags
    from ml_collections import config_flags

    from configs import demo

    path = str(pathlib.Path(__file__).parent.parent / "configs" / "robustdet_voc.py")
    argv = ["main.py", f"--config={path}", "--config.model.aid_weight=0"]  # parsed as main.py parses them
    flag_values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", path, flag_values=flag_values, lock_config=True, sys_argv=argv)
    flag_values(argv)
    assert holder.value.model.aid_weight == 0.0
    for name in ("robustdet_voc", "robustdet_cfr_voc", "robustdet_coco"):
        assert importlib.import_module(f"configs.{name}").get_config().model.aid_weight == 3.0
    assert demo.get_config().robustdet.model.aid_weight == 3.0
