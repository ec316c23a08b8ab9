"""Robustness protocols as data (docs/reference.md#evaluation-protocol): predefined protocols, checked overrides, the
caption sentence and the attack of each table column (``AttackSpec`` for the PGD family, DAG's settings)."""

import pytest

from robustdet_tf.attacks.dag import dag
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.attacks.spec import AttackSpec, DAGSpec
from robustdet_tf.evaluation import protocol as P


def test_predefined_protocols():
    ref = P.make_protocol("reference")
    assert ref["pgd"]["steps"] == 20 and ref["pgd"]["epsilon"] == ref["pgd"]["step_size"] == 8.0
    assert ref["pgd"]["random_start"] is False and ref["metric"] == "voc07"
    assert ref["dag"] == {"steps": 150, "gamma": 0.5, "variant": "reference", "epsilon": None}
    strong = P.make_protocol("strong")
    assert strong["pgd"]["random_start"] and strong["pgd"]["step_size"] == 2.0 and strong["pgd"]["steps"] >= 50
    assert strong["dag"]["variant"] == "corrected" and strong["dag"]["epsilon"] == 8.0
    assert set(P.ATTACKS) == {"clean", "DAG", "Transfer", "Worst", "Corrupt", "Patch", *P.PGD_METHODS}
    assert set(P.PAPER_ATTACKS) == {"clean", "A_cls", "A_loc", "con", "MTD", "CWA", "DAG"}
    adaptive = P.make_protocol("adaptive")
    assert adaptive["pgd"]["step_schedule"] == "apgd" and adaptive["pgd"]["restarts"] >= 2
    assert adaptive["pgd"]["epsilon"] == 8.0 and adaptive["pgd"]["steps"] >= 50
    assert all(p["pgd"]["restarts"] == 1 and p["pgd"]["step_schedule"] == "constant" for p in (ref, strong))
    assert ref["adaptive"] == {"aid_weight": 1.0, "divergence": "kl", "base": "cls"}
    # eval_attack.py attacks one image at a time: MTD's choice and CWA's class averages are each image's own.
    for protocol in (ref, strong, adaptive):
        for column in ("MTD", "CWA"):
            spec = P.attack_spec(column, protocol)
            assert spec.mtd_per_image and spec.cwa_per_image, (protocol["name"], column)


def test_overrides_are_deep_merged_and_checked():
    merged = P.make_protocol("strong", {"pgd": {"steps": 100, "con_weights": (2.0, 1.0)}, "seed": 3})
    assert merged["pgd"]["steps"] == 100 and merged["pgd"]["step_size"] == 2.0 and merged["seed"] == 3
    assert merged["pgd"]["con_weights"] == [2.0, 1.0]  # tuples become lists: the protocol is JSON data
    assert P.PROTOCOLS["strong"]["pgd"]["steps"] == 50  # the predefined dicts are not modified
    custom = P.make_protocol({"name": "mine", "dag": {"steps": 5}})  # a dict: the reference with its keys
    assert custom["name"] == "mine" and custom["dag"]["steps"] == 5 and custom["pgd"]["steps"] == 20

    with pytest.raises(KeyError, match=r"'pgd\.stpes' is not a protocol key; accepted keys at this level: "
                                       r"\['con_weights', 'cwa_per_image', 'epsilon'"):
        P.make_protocol("reference", {"pgd": {"stpes": 5}})
    with pytest.raises(KeyError, match="'metrics' is not a protocol key"):
        P.make_protocol({"metrics": "coco"})
    with pytest.raises(TypeError, match="'dag' must be a dict of"):
        P.make_protocol("reference", {"dag": 10})
    with pytest.raises(ValueError, match=r"unknown robustness protocol 'weak'; choose one of \['adaptive', "
                                         r"'reference', 'strong'\]"):
        P.make_protocol("weak")
    with pytest.raises(ValueError, match="needs dag.epsilon"):
        P.make_protocol("reference", {"dag": {"variant": "corrected"}})
    with pytest.raises(ValueError, match=r"steps must be >= 0; got pgd.steps=-1"):
        P.make_protocol("reference", {"pgd": {"steps": -1}})


@pytest.mark.parametrize("name", sorted(P.PROTOCOLS))
@pytest.mark.parametrize("column", sorted(P.PGD_METHODS))
def test_attack_spec_of_every_pgd_column_follows_the_protocol(name, column):
    protocol = P.make_protocol(name, {"seed": 11})
    spec = P.attack_spec(column, protocol)
    settings = {**protocol["pgd"], "method": P.PGD_METHODS[column], "seed": 11}
    if column == "MTD":  # MTD's choice per step has no restarts / APGD: plain steps, final iterate
        settings.update(restarts=1, step_schedule="constant")
    if column in P.ADAPTIVE_COLUMNS:
        settings.update(protocol["adaptive"])
    assert spec == AttackSpec.from_dict(settings)
    attack = P.make_attack(column, protocol)
    assert attack.func is pgd and attack.keywords == {"spec": spec}


def test_pgd_columns_differ_only_in_their_objective():
    protocol = P.make_protocol("strong")
    specs = {column: P.attack_spec(column, protocol) for column in P.PGD_METHODS}
    assert {s.method for s in specs.values()} == {"cls", "loc", "con", "mtd", "cwa", "adaptive", "fixed_pi", "aid",
                                                  "tog_vanishing", "tog_fabrication", "tog_mislabeling"}
    assert len({s.replace(method="cls") for s in specs.values()}) == 1


def test_dag_column_is_the_reference_or_bounded_as_the_protocol_says():
    reference = P.make_attack("DAG", P.make_protocol("reference", {"dag": {"steps": 7}, "seed": 2}))
    assert reference.func is dag
    assert reference.keywords == {"spec": DAGSpec(steps=7, gamma=0.5, variant="reference", epsilon=None, seed=2)}
    bounded = P.make_attack("DAG", P.make_protocol("strong", {"dag": {"epsilon": 4, "gamma": 0.25}}))
    assert bounded.keywords == {"spec": DAGSpec(steps=150, gamma=0.25, variant="corrected", epsilon=4.0, seed=0)}


def test_clean_is_no_attack_and_unknown_columns_are_refused():
    protocol = P.make_protocol("reference")
    assert P.make_attack("clean", protocol) is None
    with pytest.raises(ValueError, match=r"unknown attack 'FGSM'; choose from \('clean', 'A_cls'"):
        P.make_attack("FGSM", protocol)
    for name in ("FGSM", "DAG", "clean", "cls"):  # attack_spec is for the PGD-family columns only
        with pytest.raises(ValueError, match=f"'{name}' is not a PGD-family column"):
            P.attack_spec(name, protocol)


def test_description_names_every_setting():
    assert P.describe_protocol(P.make_protocol("reference")) == (
        "PGD-20, ε = 8, α = 8, no random start; MTD choice and CWA classes per image; DAG 150 steps, γ = 0.5, "
        "as the reference (unbounded); adaptive attacks on cls − 1·KL(π); metric voc07.")
    coupled = P.make_protocol("reference", {"pgd": {"cwa_per_image": False}})
    assert "MTD choice per image, CWA classes per batch;" in P.describe_protocol(coupled)
    strong = P.describe_protocol(P.make_protocol("strong", {"pgd": {"steps": 9, "epsilon": 4}, "metric": "coco"}))
    assert strong == ("PGD-9, ε = 4, α = 2, random start; MTD choice and CWA classes per image; DAG 150 steps, "
                      "γ = 0.5, bounded ε = 8, early stop; adaptive attacks on cls − 1·KL(π); metric coco.")
    adaptive = P.describe_protocol(P.make_protocol("adaptive", {"adaptive": {"aid_weight": 4, "divergence": "js"}}))
    assert adaptive.startswith("PGD-50, ε = 8, random start, 2 run(s), best iterate per image; APGD step schedule "
                               "from 2ε; MTD choice and CWA classes per image;")
    assert "adaptive attacks on cls − 4·JS(π)" in adaptive

