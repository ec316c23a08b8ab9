"""The demo's three models outside the paper's threat model: natural corruptions, a universal patch, TOG attacks and
the gradient check, in one table with paired intervals.

Why a bench script: the full table (15 corruptions x 5 severities for three models, a patch fitted per model, three
TOG columns) takes longer than the demo's 10 minutes; the demo prints a light Corrupt and Patch column, this script
the whole thing, resumable (it is ``--mode=evaluate`` on the demo's folder into one output folder; a rerun after an
interruption reuses the finished shards, a finished table is read back).  One JSON line per run goes to
``bench/results/threat_model.jsonl``.

    python bench/threat_model.py                       # after `python main.py` (the demo's models in runs/demo)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run_record import machine, version  # noqa: E402

from configs import demo  # noqa: E402
from robustdet_tf import cli  # noqa: E402
from robustdet_tf.evaluation.corruptions import COMMON, SEVERITIES  # noqa: E402
from robustdet_tf.evaluation.report import markdown_table  # noqa: E402

COLUMNS = ("clean", "A_cls", "Corrupt", "Patch", "TOG_vanishing", "TOG_fabrication", "TOG_mislabeling")


def threat_model_config():
    """The demo's config with the full threat-model columns: every common corruption at every severity, the patch
    at the protocol's defaults, the gradient check on every evaluation image."""
    config = demo.get_config()
    with config.unlocked():
        config.eval.attacks = COLUMNS
        overrides = config.eval.overrides.to_dict()
        overrides["corruptions"] = {"names": list(COMMON), "severities": list(SEVERITIES), "seed": 0}
        overrides.pop("patch", None)  # the protocol's patch: 100 steps of 4 pixels, side 0.15, random placement
        config.eval.overrides = overrides
        config.eval.gradient_check_images = int(config.data.eval_images)
        config.eval.sample_images = 0
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "demo"), help="the demo's folder")
    parser.add_argument("--output_dir", default=None, help="default: <workdir>/threat_model")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "threat_model.jsonl"))
    args = parser.parse_args()
    output_dir = args.output_dir or os.path.join(args.workdir, "threat_model")
    config = threat_model_config()
    started = time.time()
    finished = os.path.join(output_dir, "robustness.json")
    if os.path.exists(finished):
        with open(finished, encoding="utf-8") as handle:
            results = json.load(handle)
        print(markdown_table(results))
    else:
        results = cli.run_evaluate(config, args.workdir, output_dir=output_dir, printer=print)  # prints the table
    line = {"bench": "threat_model", "version": version(), "machine": machine(), "workdir": args.workdir,
            "columns": list(COLUMNS), "num_images": results["num_images"], "seconds": round(time.time() - started),
            "models": results["models"], "cells": results.get("cells"), "differences": results.get("differences"),
            "rPC": results.get("rPC"), "corruptions": results.get("corruptions"),
            "gradient_check": results.get("gradient_check"), "patches": results.get("patches"),
            "protocol": results["protocol"]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")
    print(json.dumps({k: line[k] for k in ("bench", "version", "num_images", "seconds")}))


if __name__ == "__main__":
    main()
