"""``TableSpec`` (one value for a robustness table, built from ``config.eval``) and ``TableRun``."""

import inspect
import json

import pytest

from configs import demo, ssd300_voc
from robustdet_tf.evaluation import robustness
from robustdet_tf.evaluation.from_config import DEFAULT_ATTACKS
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.metrics.bootstrap import BootstrapSpec


def test_built_once_from_config_eval_with_the_metric_in_the_protocol():
    settings = ssd300_voc.get_config().eval
    spec = TableSpec.from_config(settings)
    assert spec.attacks == DEFAULT_ATTACKS and spec.shard_batches == 8 and spec.sample_images == 4
    assert spec.bootstrap == BootstrapSpec(1000, 0, 0.95) and spec.transfer_source is None
    assert spec.overrides == {"metric": "voc07", "voc_offsets": "reference"}
    assert spec.resolved_protocol()["metric"] == "voc07" and spec.resolved_protocol()["pgd"]["steps"] == 20
    demo_spec = TableSpec.from_config(demo.get_config().eval)
    assert demo_spec.transfer_source == "ssd" and demo_spec.overrides["pgd"]["steps"] == 10
    assert demo_spec.overrides["voc_offsets"] == "corrected"
    with settings.unlocked():
        settings.shard_batches = 0
    assert TableSpec.from_config(settings).shard_batches is None  # 0: the whole set is one shard
    assert json.loads(json.dumps(demo_spec.to_dict()))["attacks"] == list(demo_spec.attacks)


def test_bad_specs_are_refused_when_built_and_the_entry_point_is_short():
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['PGD'\]"):
        TableSpec(attacks=("clean", "PGD"))
    with pytest.raises(ValueError, match="shard_batches must be >= 1"):
        TableSpec(shard_batches=0)
    with pytest.raises(KeyError, match="eval.bootstrap has unknown key"):
        TableSpec(bootstrap={"resample": 5})
    assert len(inspect.signature(robustness.evaluate_robustness).parameters) <= 6
