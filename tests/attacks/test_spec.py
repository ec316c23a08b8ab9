"""AttackSpec: one frozen, validated value for the settings of a PGD-family attack (docs/reference.md#pgd)."""

import dataclasses
import json

import pytest
from ml_collections import ConfigDict

from robustdet_tf.attacks.spec import METHODS, AttackSpec


def test_defaults_are_the_reference_attack():
    spec = AttackSpec()
    assert (spec.method, spec.epsilon, spec.step_size, spec.steps) == ("cls", 8.0, 8.0, 20)
    assert spec.random_start is False and spec.mtd_per_image is False and spec.seed is None
    assert set(AttackSpec.keys()) == set(spec.to_dict())


def test_values_are_normalised_to_their_types():
    spec = AttackSpec("loc", epsilon=4, step_size=1, steps=3.0, random_start=1, con_weights=[2, 1], seed="7")
    assert type(spec.epsilon) is float and type(spec.step_size) is float and type(spec.steps) is int
    assert spec.random_start is True and spec.con_weights == (2.0, 1.0) and spec.seed == 7
    assert hash(spec) == hash(AttackSpec("loc", 4.0, 1.0, 3, True, (2.0, 1.0), seed=7))  # tuples: hashable


def test_to_dict_from_dict_round_trip_through_json():
    spec = AttackSpec("con", 4.0, 2.0, steps=5, random_start=True, con_weights=(0.5, 2.0), mtd_per_image=True,
                      seed=3)
    record = json.loads(json.dumps(spec.to_dict()))  # what the results files store
    assert record["con_weights"] == [0.5, 2.0]
    assert AttackSpec.from_dict(record) == spec
    assert AttackSpec.from_dict(ConfigDict(record)) == spec  # configs are ml_collections ConfigDicts


def test_from_dict_refuses_an_unknown_key_naming_it_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"config\.model\.adversarial has unknown key\(s\) \['stpes'\]") as info:
        AttackSpec.from_dict({"method": "cls", "stpes": 5}, where="config.model.adversarial")
    assert all(key in str(info.value) for key in AttackSpec.keys())
    with pytest.raises(ValueError, match=r"^attack has unknown key\(s\) \['eps', 'schedul'\]"):
        AttackSpec.from_dict({"eps": 8, "schedul": "apgd"})


def test_replace_returns_a_new_validated_spec():
    spec = AttackSpec("cls")
    faster = spec.replace(steps=2, step_size=4)
    assert (faster.steps, faster.step_size, faster.method) == (2, 4.0, "cls")
    assert spec.steps == 20  # unchanged
    with pytest.raises(ValueError, match="unknown attack method 'fgsm'"):
        spec.replace(method="fgsm")


@pytest.mark.parametrize("method", METHODS)
def test_every_listed_method_is_accepted(method):
    assert AttackSpec(method).method == method


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "dag"}, r"unknown attack method 'dag'; choose one of \('clean', 'cls'"),
        ({"epsilon": -1.0}, "must be >= 0"),
        ({"step_size": -0.5}, "must be >= 0"),
        ({"steps": -1}, "must be >= 0"),
        ({"con_weights": (1.0,)}, r"con_weights must be \(w_loc, w_cls\)"),
    ],
)
def test_invalid_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttackSpec(**kwargs)


def test_spec_is_frozen():
    spec = AttackSpec()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 5
    assert spec.steps == 20
