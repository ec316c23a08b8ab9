"""The command line: the demo runs end to end on a tiny budget; bad keys and missing models are refused clearly."""

import json
import os
import subprocess
import sys

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
)


def run_main(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_demo_runs_end_to_end(tmp_path):
    proc = run_main(f"--workdir={tmp_path}", *TINY_DEMO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "robustness.json").read_text())
    assert set(results["models"]) == {"ssd", "ssd_at", "robustdet"}
    for row in results["models"].values():
        assert set(row) == {"clean", "A_cls", "A_loc", "CWA", "DAG"}
        assert all(v is None or 0.0 <= v <= 1.0 for v in row.values())
    assert (tmp_path / "robustness.md").exists() and (tmp_path / "robustness_bars.png").exists()
    assert (tmp_path / "robustdet" / "model.keras").exists()
    assert "phenomenon:" in proc.stdout and "steps/s" in proc.stdout
    # A second run resumes every stage instead of retraining.
    again = run_main(f"--workdir={tmp_path}", *TINY_DEMO)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "already trained" in again.stdout


def test_wrong_config_key_is_refused(tmp_path):
    proc = run_main(f"--workdir={tmp_path}", "--config.train.stpes=3")
    assert proc.returncode != 0
    assert "stpes" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_evaluate_without_a_trained_model_says_what_to_do(tmp_path):
    proc = run_main("--mode=evaluate", f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert "run --mode=train" in proc.stderr
