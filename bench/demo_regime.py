"""The sweep that chose the demo's regime: does adversarial training measurably help at this scale, and at what cost?

For each candidate setting this trains SSD-AT(A_cls) from one clean SSD (trained once per distinct clean-SSD setting)
and evaluates the clean SSD and SSD-AT under clean and A_cls on the demo's synthetic evaluation images, with paired
bootstrap intervals (``metrics/bootstrap.py``).  It prints one JSON line per setting and a last JSON line with all
of them: the settings, the four cells with their 95 % intervals, SSD-AT − SSD under A_cls with its interval, and
the seconds each part took.  The table of docs/results/regime.md comes from its output.

A setting is a JSON object of these keys (defaults = the demo's): ``epsilon`` and ``step_size`` (of the training
attack and of the evaluation PGD alike), ``eval_images``, ``ssd_steps``, ``at_steps``, ``at_learning_rate``,
``renew`` (optimiser steps per attacked batch), ``robustdet`` (1: also train RobustDet with the same budget and
add it to the table).

    python bench/demo_regime.py [--workdir /tmp/demo_regime] [--settings '[{"epsilon": 4, "step_size": 4}, ...]']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo as demo_config  # noqa: E402
from robustdet_tf import demo  # noqa: E402
from robustdet_tf import train as train_lib  # noqa: E402
from robustdet_tf.data.sources import load_source  # noqa: E402
from robustdet_tf.evaluation.from_config import evaluate_models  # noqa: E402

KEYS = ("epsilon", "step_size", "eval_images", "ssd_steps", "at_steps", "at_learning_rate", "renew", "robustdet")


def defaults() -> dict:
    config = demo_config.get_config()
    adversarial = config.ssd_at.model.adversarial
    return {"epsilon": float(adversarial["epsilon"]), "step_size": float(adversarial["step_size"]),
            "eval_images": int(config.data.eval_images), "ssd_steps": int(config.train.steps),
            "at_steps": int(config.ssd_at.train.steps), "at_learning_rate": float(config.ssd_at.train.learning_rate),
            "renew": int(adversarial["steps"]), "robustdet": 0}


def configured(setting: dict):
    """The demo config with ``setting`` applied to the clean SSD, the SSD-AT stage and the evaluation."""
    config = demo_config.get_config()
    with config.unlocked():
        config.train.steps = int(setting["ssd_steps"])
        config.data.eval_images = int(setting["eval_images"])
        for stage in (config.ssd_at, config.robustdet):
            stage.model.adversarial["epsilon"] = float(setting["epsilon"])
            stage.model.adversarial["step_size"] = float(setting["step_size"])
            stage.model.adversarial["steps"] = int(setting["renew"])
            stage.train["steps"] = int(setting["at_steps"])
            stage.train["learning_rate"] = float(setting["at_learning_rate"])
        overrides = config.eval.overrides.to_dict()
        overrides["pgd"] = {**overrides.get("pgd", {}), "epsilon": float(setting["epsilon"]),
                            "step_size": float(setting["step_size"])}
        config.eval.overrides = overrides
        config.eval.attacks = ("clean", "A_cls")
        config.eval.sample_images = 0
    return config


def run_setting(setting: dict, workdir: str, quiet) -> dict:
    config = configured(setting)
    timings = {}
    start = time.perf_counter()
    ssd_dir = os.path.join(workdir, f"ssd_{setting['ssd_steps']}")
    ssd = train_lib.train_in_workdir(demo.stage_config(config, {}, {}), ssd_dir, printer=quiet)
    timings["ssd_s"] = time.perf_counter() - start
    name = "_".join(f"{k}{setting[k]:g}" for k in KEYS if k not in ("eval_images", "robustdet"))
    start = time.perf_counter()
    source = load_source(config.data, "train")
    ssd_at = demo._train_from_ssd(config, config.ssd_at, os.path.join(workdir, f"ssd_at_{name}"), ssd, source,
                                  quiet)
    timings["ssd_at_s"] = time.perf_counter() - start
    models = {"ssd": ssd, "ssd_at": ssd_at}
    if setting["robustdet"]:
        start = time.perf_counter()
        losses = []
        models["robustdet"] = demo._train_from_ssd(config, config.robustdet, os.path.join(workdir, f"robustdet_{name}"),
                                                   ssd, source, losses.append)
        timings["robustdet_s"] = time.perf_counter() - start
        last_log = [line for line in losses if line.startswith("step ")]
        if last_log:
            timings["robustdet_last_log"] = last_log[-1]
    start = time.perf_counter()
    out_dir = os.path.join(workdir, f"eval_{name}_n{setting['eval_images']}_rd{setting['robustdet']}")
    results = evaluate_models(config, models, out_dir, printer=quiet)
    timings["eval_s"] = time.perf_counter() - start
    difference = next(d for d in results["differences"] if d["attack"] == "A_cls")
    return {
        "setting": setting,
        "num_images": results["num_images"],
        "cells": {m: {a: [round(100 * c[k], 2) for k in ("mAP", "ci_low", "ci_high")] for a, c in row.items()}
                  for m, row in results["cells"].items()},
        "ssd_at_minus_ssd_A_cls": [round(-100 * difference[k], 2) for k in ("difference", "ci_high", "ci_low")],
        "differences": [[d["attack"], d["model_a"], d["model_b"]] + [round(100 * d[k], 2) for k in
                        ("difference", "ci_low", "ci_high")] for d in results["differences"]],
        "seconds": {k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()},
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/demo_regime")
    parser.add_argument("--settings", default="[{}]", help="JSON list of settings (missing keys: the demo's)")
    args = parser.parse_args(argv)
    base = defaults()
    out = []
    for update in json.loads(args.settings):
        unknown = sorted(set(update) - set(KEYS))
        if unknown:
            raise SystemExit(f"unknown setting key(s) {unknown}; use {KEYS}")
        record = run_setting({**base, **update}, args.workdir, quiet=lambda _line: None)
        print(json.dumps(record), flush=True)
        out.append(record)
    print(json.dumps({"bench": "demo_regime", "settings": out}), flush=True)
    return out


if __name__ == "__main__":
    main()
