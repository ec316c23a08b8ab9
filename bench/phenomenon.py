"""The demo's phenomenon over several seeds: which of the paper's claims hold at this scale, and how reliably?

One demo run is one draw: its initial weights, data order and attack draws are one seed's.  This runs the demo's
pipeline (``robustdet_tf/demo.py`` with ``configs/demo.py``; the diagnostics are left out) once per seed, with a
fourth model, the paper's ablation "RobustDet without L_aid" (the same model and schedule with the AID loss weight
set to 0), so the discriminator's share of the effect is measured.  A seed sets ``config.train.seed`` of every stage
(initial weights, data order, the attacks' and the triplets' draws) and the evaluation protocol's seed.

It prints ONE JSON line: the settings, every seed's table (mAP % with 95 % paired bootstrap intervals over the
evaluation images) and claims, and per claim the mean and standard deviation over the seeds, on how many seeds it
held on the point estimate and on how many its interval carried it (``demo.phenomenon`` defines the claims).
Progress goes to stderr.  Seeds whose folders already hold trained stages are resumed, not retrained.

    python bench/phenomenon.py [--seeds 3] [--workdir /tmp/phenomenon]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging as absl_logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from robustdet_tf import demo  # noqa: E402


def study_config(seed: int):
    """The demo config for one seed, with the RobustDet-without-L_aid stage."""
    config = demo_config.get_config()
    with config.unlocked():
        config.train.seed = int(seed)
        config.robustdet_no_aid = copy.deepcopy(config.robustdet)
        config.robustdet_no_aid.model.aid_weight = 0.0
        overrides = config.eval.overrides.to_dict()
        overrides["seed"] = int(seed)
        config.eval.overrides = overrides
        config.eval.sample_images = 0
    return config


def summary(per_seed: list[dict]) -> dict:
    """Per claim over the seeds: mean and standard deviation of its value, how often it held and was significant."""
    out = {}
    for name in per_seed[0]:
        claims = [claims[name] for claims in per_seed if name in claims]
        values = [c["value"] for c in claims]
        out[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "held": sum(bool(c["holds"]) for c in claims),
            "seeds": len(claims),
        }
        if "significant" in claims[0]:
            out[name]["interval_above_0"] = sum(bool(c["significant"]) for c in claims)
    return out


def table_of(results: dict) -> dict:
    """mAP % with its interval per cell: ``{model: {attack: [value, low, high]}}``."""
    return {model: {attack: None if c["mAP"] is None else
                    [round(100 * c["mAP"], 2), round(100 * c["ci_low"], 2), round(100 * c["ci_high"], 2)]
                    for attack, c in row.items()}
            for model, row in results["cells"].items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--workdir", default="/tmp/phenomenon")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    start = time.time()
    seeds, claims = [], []
    for seed in range(args.seeds):
        began = time.time()
        out = demo.run(study_config(seed), os.path.join(args.workdir, f"seed_{seed}"),
                       printer=lambda line: print(line, file=sys.stderr, flush=True), diagnostics_stage=False)
        round_claims = {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                        for k, v in out["phenomenon"].items()}
        seeds.append({"seed": seed, "table": table_of(out["results"]), "claims": round_claims,
                      "seconds": round(time.time() - began, 1)})
        claims.append(out["phenomenon"])
    config = study_config(0)
    record = {
        "bench": "phenomenon",
        "seeds": args.seeds,
        "num_images": int(config.data.eval_images),
        "epsilon": float(config.eval.overrides["pgd"]["epsilon"]),
        "attacks": list(config.eval.attacks),
        "models": ["ssd", "ssd_at", "robustdet", "robustdet_no_aid"],
        "intervals": "95 % paired percentile bootstrap over the evaluation images, "
                     f"{config.eval.bootstrap.resamples} resamples",
        "claims": {k: {kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in v.items()}
                   for k, v in summary(claims).items()},
        "per_seed": seeds,
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
