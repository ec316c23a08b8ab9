"""One vocabulary for the reference-faithful switches: new words accepted, old spellings refused with the new name,
files of older versions read in the new spelling."""

import json

import keras
import numpy as np
import pytest
from ml_collections import ConfigDict

from robustdet_tf import behaviour
from robustdet_tf.attacks.spec import DAGSpec
from robustdet_tf.data import photometric
from robustdet_tf.evaluation import protocol as P
from robustdet_tf.evaluation import shard_plan
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.losses.aid_triplet import aid_triplet_loss
from robustdet_tf.metrics.voc import VOCMetric
from robustdet_tf.models.robustdet import RobustDet
from tests.conftest import TINY_SSD

TINY_ROBUSTDET = dict(**TINY_SSD, aid_width=8, decoder_width=16, seed=0)


def test_checked_accepts_the_words_and_names_the_new_word_for_an_old_value():
    assert behaviour.checked("x", "reference") == "reference"
    assert behaviour.checked("x", "paper", behaviour.REFERENCE_OR_PAPER) == "paper"
    with pytest.raises(ValueError, match=r"model.triplet_hinge='euclidean' .*'euclidean' was renamed 'reference'"):
        behaviour.checked("model.triplet_hinge", "euclidean", behaviour.REFERENCE_OR_PAPER)
    with pytest.raises(ValueError, match=r"True is 'reference', False is 'corrected'"):
        behaviour.checked("chain", False)
    with pytest.raises(ValueError, match=r"use one of \('reference', 'corrected'\)"):
        behaviour.checked("chain", "paper")


def test_every_switch_refuses_its_old_spelling():
    with pytest.raises(ValueError, match="'js' was renamed 'paper'"):
        RobustDet(**TINY_ROBUSTDET, triplet_hinge="js")
    with pytest.raises(ValueError, match="True is 'reference'"):
        DAGSpec(variant=True)
    with pytest.raises(ValueError, match="True is 'reference'"):
        VOCMetric(("a",), offsets=True)
    with pytest.raises(ValueError, match="chain"):
        photometric.photometric_distort(np.zeros((4, 4, 3), np.float32), (1, 2), chain="faithful")
    with pytest.raises(KeyError, match="dag.faithful was renamed dag.variant"):
        P.make_protocol("reference", {"dag": {"faithful": False}})
    with pytest.raises(KeyError, match="reference_offsets was renamed voc_offsets"):
        P.make_protocol("reference", {"reference_offsets": True})
    with pytest.raises(KeyError, match="eval.reference_offsets was renamed eval.voc_offsets"):
        TableSpec.from_config(ConfigDict({"metric": "voc07", "reference_offsets": True}))


def test_renamed_key_message_matches_full_flag_paths_only_for_renamed_keys():
    assert "data.augment_chain" in behaviour.renamed_key_message("config.data.faithful_augment")
    assert behaviour.renamed_key_message("config.data.augment") is None
    assert behaviour.renamed_key_message("config.train.steps") is None


def test_a_paper_triplet_hinge_uses_the_js_distance_and_the_reference_the_euclidean():
    paper, coded = RobustDet(**TINY_ROBUSTDET, triplet_hinge="paper"), RobustDet(**TINY_ROBUSTDET)
    assert coded.triplet_hinge == "reference"
    pi = np.random.default_rng(0).dirichlet(np.ones(4), size=8).astype(np.float32)
    labels = np.array([0] * 4 + [1] * 4, np.int32)
    for model, distance in ((coded, "euclidean"), (paper, "js")):
        want, _ = aid_triplet_loss(pi, labels, model.triplet_margin, distance, seed=keras.random.SeedGenerator(0))
        got, _ = model._global_triplet_loss(pi, 4)
        np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    assert abs(float(coded._global_triplet_loss(pi, 4)[0]) - float(paper._global_triplet_loss(pi, 4)[0])) > 1e-4


def test_an_old_keras_config_loads_in_the_new_spelling(tmp_path):
    model = RobustDet(**TINY_ROBUSTDET, triplet_hinge="paper")
    model(np.zeros((1, 64, 64, 3), np.float32))
    config = model.get_config()
    config["triplet_hinge"] = "js"  # what a .keras file of an earlier version holds
    loaded = RobustDet.from_config(config)
    assert loaded.triplet_hinge == "paper"
    path = tmp_path / "model.keras"
    model.save(path)
    assert keras.saving.load_model(path).triplet_hinge == "paper"


def test_results_and_plans_of_older_versions_read_in_the_new_spelling(tmp_path):
    old = json.loads(json.dumps(P.make_protocol("strong")))
    old["reference_offsets"] = old.pop("voc_offsets") == "reference"
    old["dag"]["faithful"] = old["dag"].pop("variant") == "reference"
    assert behaviour.migrated_protocol(old) == P.make_protocol("strong")
    assert P.describe_protocol(old) == P.describe_protocol(P.make_protocol("strong"))
    assert P.make_protocol(old) == P.make_protocol("strong")

    metric = VOCMetric(("a", "b"), offsets="corrected")
    plan = shard_plan.make_plan({}, ["clean"], P.make_protocol("strong"), 2, metric, {"n": 1})
    assert shard_plan.check_plan(tmp_path, plan) is False
    saved = tmp_path / "shards" / "plan.json"
    written = json.loads(saved.read_text())
    written["protocol"] = old
    written["metric"]["settings"]["reference_offsets"] = False
    del written["metric"]["settings"]["offsets"]
    saved.write_text(json.dumps(written))
    assert shard_plan.check_plan(tmp_path, plan) is True  # resumes

    state = metric.state()
    settings = json.loads(str(state["settings"]))
    settings["reference_offsets"] = settings.pop("offsets") == "reference"
    state["settings"] = np.array(json.dumps(settings, sort_keys=True))
    merged = VOCMetric.from_state(state)
    assert merged.offsets == "corrected"
    metric.merge(state)
