"""The command line: the demo runs end to end on a tiny budget; bad keys and missing models are refused clearly."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DEMO = (
    "--config.train.steps=3",
    "--config.train.log_every=1",
    "--config.robustdet.train.steps=2",
    "--config.ssd_at.train.steps=2",
    "--config.robustdet.train.batch_size=4",
    "--config.ssd_at.train.batch_size=4",
    "--config.train.batch_size=4",
    "--config.data.train_images=16",
    "--config.data.eval_images=4",
    "--config.eval.batch_size=4",
    "--config.eval.overrides.pgd.steps=1",
    "--config.eval.overrides.dag.steps=2",
    "--config.eval.sample_images=1",
    "--config.analysis.images=2",
    "--config.analysis.batch_size=2",
    "--config.analysis.conflict_steps=1",
)


def run_main(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    proc = run_main(f"--workdir={tmp_path}", *TINY_DEMO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "robustness.json").read_text())
    assert set(results["models"]) == {"ssd", "ssd_at", "robustdet"}
    for row in results["models"].values():
        assert set(row) == {"clean", "A_cls", "A_loc", "CWA", "DAG", "Adaptive", "Transfer"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in row.values())
    assert results["transfer_source"] == "ssd" and results["models"]["ssd"]["Transfer"] == results["models"]["ssd"][
        "A_cls"]
    assert results["bootstrap"]["num_images"] == 4 and len(results["differences"]) == 8 * 3
    assert (tmp_path / "robustness.md").exists() and (tmp_path / "robustness_bars.png").exists()
    assert (tmp_path / "robustdet" / "model.keras").exists()
    assert "claim: adversarial_training_helps:" in proc.stdout and "steps/s" in proc.stdout
    # Each stage reports what it trains; the table reports each cell (20: the SSD's Transfer cell is its A_cls cell).
    assert proc.stdout.count("== run ==") == 3 and "weights from: the demo's clean SSD (K copies" in proc.stdout
    assert "cell 1/20 (ssd, clean): 4 images in" in proc.stdout and "cell 20/20 (robustdet, Transfer)" in proc.stdout
    # A quiet console: progress, the table, the claims and the findings, none of TensorFlow's INFO or WARNING lines
    # (each fixed at its cause: checkpoint INFO lines below absl's default verbosity, the training cache filled by
    # one complete pass, one concrete function per table cell; the start-up notices held back).
    for noise in ("functional_saver", "did not fully read the dataset being cached", "triggered tf.function retracing",
                  "oneDNN custom operations", "absl::InitializeLog"):
        assert noise not in proc.stdout and noise not in proc.stderr, noise
    assert "finding: gradient entanglement" in proc.stdout  # stage 5: the cheap diagnostics
    record = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    assert "step_sweep" not in record["figures"] and (tmp_path / "analysis" / "fig4_entanglement.png").exists()
    _check_stages_start_from_the_clean_ssd(tmp_path)
    _check_table_equals_a_fresh_evaluation(tmp_path, results)
    # A second run resumes every stage instead of retraining.
    again = run_main(f"--workdir={tmp_path}", *TINY_DEMO)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "already trained" in again.stdout and "diagnostics already in" in again.stdout


def _tiny_demo_config():
    """configs/demo.py with the TINY_DEMO flag overrides applied, as main.py applies them."""
    sys.path.insert(0, ROOT)
    from configs import demo

    config = demo.get_config()
    for flag in TINY_DEMO:
        path, value = flag[len("--config."):].split("=", 1)
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = ast.literal_eval(value)
    return config


def _check_stages_start_from_the_clean_ssd(workdir):
    """RobustDet is the clean SSD expanded K-fold and SSD-AT a copy of it, each then trained 2 small Adam steps:
    every kernel is within a few learning rates of the SSD's, and none of the stages is left untrained."""
    import keras

    import robustdet_tf  # noqa: F401  (registers the layers)

    ssd, ssd_at, robustdet = (keras.saving.load_model(workdir / name / "model.keras")
                              for name in ("ssd", "ssd_at", "robustdet"))
    moved = [np.abs(a - b).max() for a, b in zip(ssd_at.get_weights(), ssd.get_weights())]
    assert max(moved) < 5e-3 and max(moved) > 0
    rd_convs = robustdet.detector.all_convs()
    moved = []
    for name, plain in ssd.detector.all_convs().items():
        kernels = rd_convs[name].kernel.numpy()  # [K, kh, kw, Cin, Cout]
        moved.append(np.abs(kernels - plain.kernel.numpy()[None]).max())
    assert len(moved) == len(rd_convs) and max(moved) < 5e-3 and max(moved) > 0


def _check_table_equals_a_fresh_evaluation(workdir, results):
    """The clean column is what an independent evaluation of the saved models measures, to float precision, and
    the attack columns differ from it (the attacks ran)."""
    import keras

    from robustdet_tf.evaluation.evaluate import evaluate_detections, make_metric
    from robustdet_tf.evaluation.from_config import eval_batches

    config = _tiny_demo_config()
    source, batches = eval_batches(config)
    for name, row in results["models"].items():
        model = keras.saving.load_model(workdir / name / "model.keras")
        fresh = evaluate_detections(model, batches, make_metric(config.eval.metric, source.class_names,
                                                                 offsets=config.eval.voc_offsets))["mAP"]
        assert abs(fresh - row["clean"]) < 1e-9, name
    assert any(row["A_cls"] != row["clean"] for row in results["models"].values())


def test_wrong_config_key_is_refused(tmp_path):
    proc = run_main(f"--workdir={tmp_path}", "--config.train.stpes=3")
    assert proc.returncode == 2
    assert 'unknown config key stpes Did you mean "steps"' in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_an_old_spelling_of_a_switch_is_refused_with_its_new_name(tmp_path):
    proc = run_main(f"--workdir={tmp_path}", "--config.data.faithful_augment=False")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.faithful_augment was renamed data.augment_chain" in proc.stderr and "'corrected'" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_bad_flag_values_name_the_flag_the_value_and_what_is_accepted(tmp_path):
    proc = run_main(f"--workdir={tmp_path}", "--config.train.batch_size=abc")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--config.train.batch_size='abc' is not a valid int" in proc.stderr
    assert "e.g. --config.train.batch_size=16" in proc.stderr
    proc = run_main(f"--workdir={tmp_path}", "--mode=nonsense")
    assert proc.returncode == 2
    assert "--mode='nonsense' is not a mode; use one of: demo, train, evaluate, attack, export, import" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_evaluate_without_a_trained_model_says_what_to_do(tmp_path):
    proc = run_main("--mode=evaluate", f"--workdir={tmp_path}")
    assert proc.returncode == 1
    assert "run --mode=train" in proc.stderr and "Traceback" not in proc.stderr


TINY_ANALYZE = (
    "--mode=analyze",
    "--config.data.train_images=4",
    "--config.data.eval_images=4",
    "--config.eval.overrides.pgd.steps=1",
    "--config.analysis.images=2",
    "--config.analysis.batch_size=2",
    "--config.analysis.sweep_steps=(0, 2)",
    "--config.analysis.conflict_steps=1",
)


def _demo_like_workdir(workdir):
    """The demo's layout with untrained models of its config: ssd/ (plain), ssd_at/ (adversarial config) and
    robustdet/ (expanded from the SSD, the AID as initialised)."""
    from robustdet_tf import demo
    from robustdet_tf import initial_model as starts

    config = _tiny_demo_config()
    ssd = starts.initial_model(config)
    ssd_at = starts.model_from_ssd(ssd, demo.stage_config(config, dict(config.ssd_at.model), {}))
    robustdet = starts.model_from_ssd(ssd, demo.stage_config(config, dict(config.robustdet.model), {}))
    for name, model in (("ssd_at", ssd_at), ("robustdet", robustdet), ("ssd", ssd)):
        (workdir / name).mkdir()
        model.save(workdir / name / "model.keras")
    return len(ssd.detector.all_convs())


@pytest.mark.slow
def test_analyze_writes_every_figure_for_the_models_of_a_workdir(tmp_path):
    num_layers = _demo_like_workdir(tmp_path)
    proc = run_main(f"--workdir={tmp_path}", *TINY_ANALYZE)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "analysis"
    record = json.loads((out / "analysis.json").read_text())
    assert record["models"] == ["ssd", "ssd_at", "robustdet"]  # plain SSD, adversarially trained SSD, RobustDet
    for name in record["files"]:
        assert (out / name).stat().st_size > 0
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {n for n in record["files"] if n.endswith(".png")} == {
        "fig3_loss_conflict.png", "fig4_entanglement.png", "fig5_loss_changes.png", "fig7ab_step_sweep.png",
        "fig7c_confidence.png", "mechanism_separation.png"}
    entangled = json.loads((out / "entanglement.json").read_text())
    assert set(entangled) == {"ssd", "ssd_at", "robustdet"}
    assert len(entangled["ssd"]["layers"]) == num_layers and entangled["ssd"]["num_pairs"] == 2
    conflict = json.loads((out / "loss_conflict.json").read_text())
    assert all(len(conflict["ssd"][c]["per_image"]) == 2 for c in ("clean_to_clean", "clean_to_adv",
                                                                      "adv_to_clean", "adv_to_adv"))
    sweep = json.loads((out / "step_sweep.json").read_text())
    assert set(sweep["ssd"]) == {"A_cls", "A_loc"} and set(sweep["ssd"]["A_cls"]) == {"0", "2"}
    assert all(0.0 <= v <= 1.0 for v in sweep["ssd_at"]["A_loc"].values())
    stats = json.loads((out / "attack_statistics.json").read_text())
    assert set(stats["ssd"]["confidence"]) == {"clean", "A_cls", "A_loc"}
    findings = [line for line in proc.stdout.splitlines() if line.startswith("finding: ")]
    assert len(findings) == len(record["findings"]) and any("gradient entanglement" in f for f in findings)
    # The mechanism: RobustDet's AID separation on every evaluation image (4) with an interval, kernels identical
    # (expanded from the SSD, untrained), π shift; the SSDs have no AID.
    mech = json.loads((out / "mechanism.json").read_text())
    assert mech["ssd"] == {"has_aid": False} and mech["ssd_at"] == {"has_aid": False}
    rd = mech["robustdet"]
    assert rd["num_images"] == 4 and rd["kernel_spread"] == pytest.approx(0.0, abs=1e-6)
    assert rd["aid_auc_ci_low"] <= rd["aid_auc"] <= rd["aid_auc_ci_high"] and rd["pi_shift"] >= 0
    assert rd["transfer"]["source"] == "ssd" and 0.0 <= rd["transfer"]["aid_auc"] <= 1.0  # the demo's source
    assert any(f.startswith("finding: AID separation of A_cls from clean images") and "robustdet" in f
               for f in findings)
    assert any(f.startswith("finding: kernel spread") for f in findings)
    checked = json.loads((out / "gradient_check.json").read_text())
    assert set(checked) == {"ssd", "ssd_at", "robustdet"} and checked["ssd"]["num_images"] == 2
    assert checked["ssd"]["steps"] == 1 and len(checked["robustdet"]["mean_loss_by_step"]) == 2
    assert any(f.startswith("finding: gradient check under A_cls (2 images, 1 PGD steps") for f in findings)
    # A named output folder that holds results is refused: nothing is overwritten.
    again = run_main(f"--workdir={tmp_path}", *TINY_ANALYZE, f"--output_dir={out}")
    assert again.returncode == 1 and "already holds results" in again.stderr and "Traceback" not in again.stderr


def test_analyze_without_models_says_what_to_do(tmp_path):
    proc = run_main("--mode=analyze", f"--workdir={tmp_path}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "holds no model" in proc.stderr and "--mode=train" in proc.stderr
    assert not any(tmp_path.iterdir())
