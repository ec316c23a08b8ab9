"""The demo's helpers: stage configs, the phenomenon check, and the wiring of its four stages (with the training
and evaluation functions replaced by recorders; the real end-to-end demo runs in test_main.py)."""

import os

import pytest

from configs import demo as demo_config
from robustdet_tf import demo
from robustdet_tf import initial_model as starts
from robustdet_tf import train as train_lib


def difference(attack, a, b, value, low, high):
    return {"attack": attack, "model_a": a, "model_b": b, "difference": value, "ci_low": low, "ci_high": high}


def results(ssd_clean=0.35, ssd_cls=0.01, rd_clean=0.39, rd_cls=0.11, at_minus_ssd=(0.06, 0.02, 0.09)):
    """A table of the three models; SSD-AT's A_cls difference to the SSD stored as ssd − ssd_at (the claims must turn
    it round)."""
    value, low, high = at_minus_ssd
    return {"models": {"ssd": {"clean": ssd_clean, "A_cls": ssd_cls},
                       "robustdet": {"clean": rd_clean, "A_cls": rd_cls},
                       "ssd_at": {"clean": 0.3, "A_cls": ssd_cls + value}},
            "num_images": 100,
            "differences": [
                difference("A_cls", "ssd", "ssd_at", -value, -high, -low),
                difference("clean", "ssd_at", "robustdet", 0.3 - rd_clean, -0.12, -0.06),
                difference("A_cls", "ssd_at", "robustdet", ssd_cls + value - rd_cls, -0.05, 0.01),
                difference("Lowest", "ssd_at", "robustdet", 0.01, -0.02, 0.04),
            ]}


def test_stage_config_is_a_copy_with_the_stage_sections():
    config = demo_config.get_config()
    stage = demo.stage_config(config, dict(config.robustdet.model), {"steps": 7, "optimizer": "sgd"})
    assert stage.model.kind == "robustdet" and stage.model.aid_width == 8  # keys the clean config lacks
    assert stage.model.adversarial.to_dict() == config.robustdet.model.adversarial.to_dict()
    assert stage.model.width == config.model.width  # everything else kept from the base config
    assert (stage.train.steps, stage.train.optimizer, stage.train.batch_size) == (7, "sgd", config.train.batch_size)
    assert "aid_width" not in config.model and config.train.steps == 1500 and config.model.kind == "ssd"
    assert stage.data is not config.data and stage.data.to_dict() == config.data.to_dict()


@pytest.mark.parametrize(
    "numbers, collapses, keeps",
    [
        (dict(), True, True),
        (dict(ssd_cls=0.069), True, True),  # just below 0.2 × 0.35
        (dict(ssd_cls=0.071), False, True),
        (dict(rd_clean=0.316), True, True),  # just above 0.9 × 0.35
        (dict(rd_clean=0.314), True, False),
    ],
)
def test_phenomenon_applies_the_readme_criteria(numbers, collapses, keeps):
    claims = demo.phenomenon(results(**numbers))
    assert claims["ssd_collapses_under_A_cls"]["holds"] is collapses
    assert claims["robustdet_keeps_clean_map"]["holds"] is keeps
    r = results(**numbers)["models"]
    assert claims["ssd_collapses_under_A_cls"]["value"] == pytest.approx(r["ssd"]["A_cls"] / r["ssd"]["clean"])
    assert claims["robustdet_keeps_clean_map"]["value"] == pytest.approx(r["robustdet"]["clean"] / r["ssd"]["clean"])


@pytest.mark.parametrize(
    "at_minus_ssd, holds, significant",
    [((0.06, 0.02, 0.09), True, True), ((0.02, -0.01, 0.05), True, False), ((-0.02, -0.05, 0.01), False, False)],
)
def test_differences_are_turned_to_the_claimed_order_with_their_intervals(at_minus_ssd, holds, significant):
    claim = demo.phenomenon(results(at_minus_ssd=at_minus_ssd))["adversarial_training_helps"]
    value, low, high = (100 * v for v in at_minus_ssd)
    assert claim["value"] == pytest.approx(value)
    assert (claim["ci_low"], claim["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert claim["holds"] is holds and claim["significant"] is significant
    clean = demo.phenomenon(results())["robustdet_beats_ssd_at_clean"]  # stored as ssd_at − robustdet
    assert (clean["value"], clean["ci_low"], clean["ci_high"]) == (pytest.approx(9.0), pytest.approx(6.0),
                                                                    pytest.approx(12.0))
    assert demo.claim_line("x", clean) == "x: +9.0 points [+6.0, +12.0] → holds, interval above 0"
    lowest = demo.phenomenon(results())["robustdet_beats_ssd_at_lowest"]
    assert lowest["value"] == pytest.approx(-1.0) and not lowest["holds"]


def test_phenomenon_survives_zero_maps_and_names_a_missing_difference():
    claims = demo.phenomenon(results(ssd_clean=0.0, ssd_cls=0.0, rd_clean=0.0, rd_cls=0.0))
    assert claims["ssd_collapses_under_A_cls"]["value"] == 0.0
    bare = results()
    bare["differences"] = []
    with pytest.raises(KeyError, match="no paired difference of ssd_at and ssd under A_cls"):
        demo.phenomenon(bare)


@pytest.fixture
def recorded(monkeypatch):
    """Replace training, expansion, data and evaluation by recorders; each trained "model" is its stage folder."""
    calls = []

    def train_in_workdir(config, workdir, model=None, source=None, printer=print, origin=None):
        calls.append(("train", os.path.basename(workdir), config, model, source))
        if model is not None:  # a stage started from the clean SSD says so in its start-of-run report
            assert origin is not None and origin.startswith("the demo's clean SSD (")
        return f"model<{os.path.basename(workdir)}>"

    def model_from_ssd(ssd, config):
        calls.append(("expand", ssd, config))
        return f"init<{ssd}|{config.model.get('kind', 'ssd')}>"

    def evaluate_models(config, models, output_dir, printer=print):
        calls.append(("evaluate", dict(models), output_dir))
        return results()

    monkeypatch.setattr(train_lib, "train_in_workdir", train_in_workdir)
    monkeypatch.setattr(starts, "model_from_ssd", model_from_ssd)
    monkeypatch.setattr(demo, "load_source", lambda data, role: f"source<{role}>")
    def analyze_models(config, models, output_dir, figures=None, printer=print):
        calls.append(("analyze", dict(models), output_dir, tuple(figures)))
        return {"findings": ["a finding"], "summaries": {}, "files": []}

    monkeypatch.setattr(demo, "evaluate_models", evaluate_models)
    monkeypatch.setattr(demo, "analyze_models", analyze_models)
    return calls


def test_run_trains_the_stages_in_order_from_the_clean_ssd_and_evaluates_all_three(recorded, tmp_path):
    config = demo_config.get_config()
    printed = []
    out = demo.run(config, str(tmp_path), printer=printed.append)

    trains = [c for c in recorded if c[0] == "train"]
    assert [c[1] for c in trains] == ["ssd", "robustdet", "ssd_at"]
    assert all(c[4] == "source<train>" for c in trains)  # one training source for every stage
    ssd_stage, rd_stage, at_stage = (c[2] for c in trains)
    assert ssd_stage.model.to_dict() == config.model.to_dict() and trains[0][3] is None  # fresh clean SSD
    assert rd_stage.model.kind == "robustdet" and rd_stage.train.steps == config.robustdet.train.steps
    assert at_stage.model.kind == "ssd" and at_stage.model.adversarial == config.ssd_at.model.adversarial
    assert trains[1][3] == "init<model<ssd>|robustdet>" and trains[2][3] == "init<model<ssd>|ssd>"  # both from it
    assert [c[1] for c in recorded if c[0] == "expand"] == ["model<ssd>", "model<ssd>"]

    evaluation, analysis = recorded[-2:]
    three = {"ssd": "model<ssd>", "ssd_at": "model<ssd_at>", "robustdet": "model<robustdet>"}
    assert evaluation == ("evaluate", three, str(tmp_path))
    assert analysis == ("analyze", three, str(tmp_path / "analysis"), demo.CHEAP_FIGURES)
    assert "step_sweep" not in demo.CHEAP_FIGURES
    assert out == {"results": results(), "phenomenon": demo.phenomenon(results()), "findings": ["a finding"]}
    assert "finding: a finding" in printed
    assert "claim: adversarial_training_helps: +6.0 points [+2.0, +9.0] → holds, interval above 0" in printed
    assert "claim: ssd_collapses_under_A_cls: 0.0286 → holds" in printed
    assert printed[-1].startswith("demo finished in") and str(tmp_path) in printed[-1]


def test_the_study_adds_robustdet_without_l_aid_and_can_skip_the_diagnostics(recorded, tmp_path):
    config = demo_config.get_config()
    with config.unlocked():
        config.robustdet_no_aid = dict(model=dict(config.robustdet.model, aid_weight=0.0),
                                       train=dict(config.robustdet.train))
    out = demo.run(config, str(tmp_path), printer=lambda *_: None, diagnostics_stage=False)
    trains = [c for c in recorded if c[0] == "train"]
    assert [c[1] for c in trains] == ["ssd", "robustdet", "ssd_at", "robustdet_no_aid"]
    assert trains[3][2].model.aid_weight == 0.0 and trains[1][2].model.get("aid_weight", 3.0) == 3.0
    evaluation = next(c for c in recorded if c[0] == "evaluate")
    assert list(evaluation[1]) == ["ssd", "ssd_at", "robustdet", "robustdet_no_aid"]
    assert not any(c[0] == "analyze" for c in recorded) and out["findings"] == []


def test_a_stage_with_an_intact_checkpoint_resumes_and_one_whose_first_write_died_starts_again(recorded, tmp_path):
    import tensorflow as tf

    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(tmp_path / "robustdet" / "checkpoints" / "ckpt-200"))
    (tmp_path / "ssd_at" / "checkpoints" / "ckpt-200_temp").mkdir(parents=True)  # killed in its first save
    demo.run(demo_config.get_config(), str(tmp_path), printer=lambda *_: None)
    trains = {c[1]: c for c in recorded if c[0] == "train"}
    assert trains["robustdet"][3] is None  # resumes from its own checkpoint
    assert trains["ssd_at"][3] == "init<model<ssd>|ssd>"  # starts from the clean SSD, not from random weights
    assert [c[2].model.get("kind", "ssd") for c in recorded if c[0] == "expand"] == ["ssd"]


def test_the_demo_config_evaluates_the_transfer_column_at_its_own_budget():
    config = demo_config.get_config()
    assert {"Adaptive", "Transfer"} <= set(config.eval.attacks) and config.eval.transfer_source == "ssd"
    budget = config.eval.overrides["pgd"]
    assert budget["epsilon"] == budget["step_size"] == demo_config.EPSILON
    for stage in ("robustdet", "ssd_at"):  # the training attack has the evaluation's budget
        adversarial = config[stage].model.adversarial
        assert adversarial["epsilon"] == adversarial["step_size"] == demo_config.EPSILON


def test_bad_stage_or_table_settings_are_refused_before_the_first_stage_trains(recorded, tmp_path):
    from robustdet_tf.workdir import BadTrainingSettingError

    config = demo_config.get_config()
    config.ssd_at.train.learning_rate = -1.0
    with pytest.raises(BadTrainingSettingError, match="config.train.learning_rate=-1.0"):
        demo.run(config, str(tmp_path / "a"))
    config = demo_config.get_config()
    config.eval.overrides = {**config.eval.overrides.to_dict(), "pgd": {"epsilon": -2.0}}
    with pytest.raises(ValueError, match="pgd.epsilon=-2.0 is negative"):
        demo.run(config, str(tmp_path / "b"))
    assert recorded == [] and not any(tmp_path.iterdir())  # nothing trained, nothing written
