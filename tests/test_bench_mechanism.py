"""The regime search and the seed study (bench/mechanism.py, bench/phenomenon.py): regimes reach every stage and the
table, the paper's variant has both of its switches, finished runs are read back, the trade-off picture is drawn."""

import importlib.util
import json
import os

import pytest

from configs import demo as demo_config
from robustdet_tf import demo

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(_BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_with_regime_reaches_every_adversarial_stage_the_table_and_the_diagnostics():
    base = demo_config.get_config()
    config = _load("phenomenon").study_config(2, {"epsilon": 4, "adversarial_steps": 1600, "width": 0.25,
                                                  "eval_images": 150}, paper_variant=True)
    for name in ("robustdet", "ssd_at", "robustdet_no_aid", "robustdet_paper"):
        adversarial = config[name].model.adversarial
        assert (adversarial.epsilon, adversarial.step_size, config[name].train.steps) == (4.0, 4.0, 1600), name
        assert adversarial.steps == base.robustdet.model.adversarial.steps  # the renewal period is not a lever
    assert config.eval.overrides.pgd.to_dict() == {**base.eval.overrides.pgd.to_dict(), "epsilon": 4.0,
                                                   "step_size": 4.0}
    assert config.eval.overrides.seed == 2 and config.train.seed == 2
    assert (config.model.width, config.data.eval_images, config.analysis.mechanism_images) == (0.25, 150, 150)
    assert config.train.steps == base.train.steps  # the clean SSD keeps its schedule
    # nothing given: the demo's regime
    assert demo_config.with_regime(demo_config.get_config()).to_dict() == base.to_dict()


def test_the_paper_variant_differs_from_robustdet_by_its_two_switches_only():
    config = _load("phenomenon").study_config(0, paper_variant=True)
    paper, coded = config.robustdet_paper.model.to_dict(), config.robustdet.model.to_dict()
    assert (paper["triplet_hinge"], paper["loss_weighting"]) == ("paper", "paper")
    assert (coded["triplet_hinge"], coded["loss_weighting"]) == ("reference", "reference")
    assert {k for k in paper if paper[k] != coded[k]} == {"triplet_hinge", "loss_weighting"}
    assert "robustdet_paper" not in _load("phenomenon").study_config(0)
    assert config.robustdet_no_aid.model.aid_weight == 0.0


def _difference(attack, a, b, value):
    return {"attack": attack, "model_a": a, "model_b": b, "difference": value, "ci_low": value - 0.02,
            "ci_high": value + 0.02}


def test_the_paper_variant_gets_its_claims_against_ssd_at():
    models = {m: {"clean": 0.3, "A_cls": 0.1} for m in ("ssd", "ssd_at", "robustdet", "robustdet_paper")}
    differences = [_difference("A_cls", "ssd_at", "ssd", 0.05)]
    differences += [_difference(a, "robustdet", "ssd_at", 0.0) for a in ("clean", "A_cls", "Lowest")]
    differences += [_difference(a, "ssd_at", "robustdet_paper", -0.03) for a in ("clean", "A_cls", "Lowest")]
    claims = demo.phenomenon({"models": models, "differences": differences})
    claim = claims["paper_variant_beats_ssd_at_A_cls"]
    assert claim["value"] == pytest.approx(3.0) and claim["ci_low"] == pytest.approx(1.0) and claim["significant"]
    assert {"paper_variant_beats_ssd_at_clean", "paper_variant_beats_ssd_at_lowest"} <= set(claims)


def test_the_search_plans_lengths_shortest_first_and_refuses_unknown_keys():
    bench = _load("mechanism")
    planned = bench.plan([{"epsilon": 4, "adversarial_steps": 1600}, {"epsilon": 8}, {"epsilon": 4}])
    assert [(s["epsilon"], s["adversarial_steps"]) for s in planned] == [(4, 400), (4, 1600), (8, 400)]
    assert planned[0]["width"] == 0.125 and planned[0]["eval_images"] == 150
    with pytest.raises(SystemExit, match="unknown setting key"):
        bench.plan([{"epsilon": 4, "stpes": 3}])
    assert len(bench.GRID) == 12 and {s["adversarial_steps"] for s in bench.GRID} == {400, 1600}


def test_finished_settings_and_seeds_are_read_back_and_a_torn_line_is_not(tmp_path):
    bench = _load("mechanism")
    path = tmp_path / "m.jsonl"
    done = {**bench.DEFAULT_SETTING, "epsilon": 4.0, "aid_auc": 0.7}
    path.write_text(json.dumps(done) + "\n" + '{"epsilon": 8.0, "adversa')
    found = bench.recorded(str(path))
    assert list(found.values()) == [done]
    assert bench.setting_key({**bench.DEFAULT_SETTING, "epsilon": 4}) in found
    assert bench.final_loss_aid(["step 100/400 loss=3.1 loss_aid=0.5983 loss_c=2", "saved x"]) == pytest.approx(0.5983)
    assert bench.final_loss_aid(["step 1/2 loss=3"]) is None
    study = _load("phenomenon")
    seeds = tmp_path / "p.jsonl"
    lines = [{"regime": {"epsilon": 4}, "models": ["ssd"], "attacks": ["clean"], "seed": 0},
             {"regime": {}, "models": ["ssd"], "attacks": ["clean"], "seed": 1}]
    seeds.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{torn")
    assert list(study.recorded_seeds(str(seeds), {"epsilon": 4}, ["ssd"], ["clean"])) == [0]
    assert study.recorded_seeds(str(seeds), {"epsilon": 4}, ["ssd", "ssd_at"], ["clean"]) == {}
    assert study.recorded_seeds(str(seeds), {"epsilon": 4}, ["ssd"], ["clean", "A_cls"]) == {}
    assert study.recorded_seeds(None, {}, ["ssd"], ["clean"]) == {}
    assert study.study_config(0, attacks=("clean", "A_cls")).eval.attacks == ("clean", "A_cls")


def test_the_tradeoff_picture_is_a_png(tmp_path):
    study = _load("phenomenon")
    row = {"clean": [30.0, 27.0, 33.0], "A_cls": [10.0, 8.0, 12.5]}
    per_seed = [{"seed": s, "table": {"ssd": row, "ssd_at": row}} for s in range(3)]
    study.tradeoff_figure(per_seed, str(tmp_path / "t.png"), "title")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_variants_change_only_robustdet_and_kernels_apart_start_apart():
    import keras

    from robustdet_tf.analysis.mechanism import kernel_spread
    from robustdet_tf.models.robustdet import RobustDet
    from robustdet_tf.models.ssd import SSD
    from tests.conftest import TINY_SSD

    bench = _load("mechanism")
    base = bench.configured(bench.DEFAULT_SETTING, 400)
    k2 = bench.configured({**bench.DEFAULT_SETTING, "variant": "k2"}, 400)
    assert k2.robustdet.model.num_kernels == 2 and base.robustdet.model.num_kernels == 4
    assert k2.ssd_at.to_dict() == base.ssd_at.to_dict() and k2.model.to_dict() == base.model.to_dict()
    assert bench.configured({**bench.DEFAULT_SETTING, "variant": "no_adc"}, 400).robustdet.model.adc == -1
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.configured({**bench.DEFAULT_SETTING, "variant": "k3"}, 400)
    assert bench.setting_key({**bench.DEFAULT_SETTING}) == bench.setting_key(
        {k: v for k, v in bench.DEFAULT_SETTING.items() if k != "variant"})  # old lines are the base variant
    keras.utils.set_random_seed(0)
    model = RobustDet.from_ssd(SSD(**TINY_SSD), num_kernels=4, aid_width=4)
    assert kernel_spread(model)["mean"] == pytest.approx(0.0, abs=1e-7)
    bench.spread_kernels(model, 0.1, seed=0)
    # u uniform in [-1, 1]: each kernel's relative deviation from the mean is about 0.1 * sqrt(1/3 * 3/4) = 0.05
    assert 0.04 < kernel_spread(model)["mean"] < 0.06
    assert bench._prepare({**bench.DEFAULT_SETTING}) is None


def test_a_seed_whose_table_is_finished_is_read_back_not_evaluated_again(tmp_path):
    from robustdet_tf.evaluation.table_spec import TableSpec

    study = _load("phenomenon")
    config = study.study_config(0, attacks=("clean", "A_cls"))
    models = ["ssd", "ssd_at", "robustdet", "robustdet_no_aid"]
    table = {m: {"clean": 0.3, "A_cls": 0.1} for m in models}
    differences = [{"attack": a, "model_a": x, "model_b": y, "difference": 0.01, "ci_low": 0.0, "ci_high": 0.02}
                   for a in ("clean", "A_cls", "Lowest") for x, y in (("ssd_at", "ssd"), ("robustdet", "ssd_at"),
                                                                      ("robustdet", "robustdet_no_aid"))]
    results = {"models": table, "differences": differences,
               "table_spec": TableSpec.from_config(config.eval).to_dict()}
    (tmp_path / "robustness.json").write_text(json.dumps(results))
    out = study.finished_run(config, str(tmp_path), models)
    assert out["results"] == json.loads(json.dumps(results))
    assert out["phenomenon"]["adversarial_training_helps"]["value"] == pytest.approx(1.0)
    assert study.finished_run(config, str(tmp_path), models[:3]) is None  # other models: evaluate again
    other = study.study_config(0, {"epsilon": 4}, attacks=("clean", "A_cls"))
    assert study.finished_run(other, str(tmp_path), models) is None  # another protocol: evaluate again
    assert study.finished_run(config, str(tmp_path / "none"), models) is None
