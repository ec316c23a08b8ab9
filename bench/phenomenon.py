"""The paper's claims over several seeds at one regime: which hold at this scale, how reliably, and is the mechanism on?

One demo run is one draw: its initial weights, data order and attack draws are one seed's.  This runs the demo's
pipeline (``robustdet_tf/demo.py`` with ``configs/demo.py``, at the regime ``--regime`` gives through
``configs/demo.py: with_regime``; the demo's regime by default) once per seed with more models than the demo:

* ``robustdet_no_aid``: the paper's ablation "RobustDet without L_aid" (the same model and schedule with the AID loss
  weight set to 0), so the discriminator's share of the effect is measured;
* ``robustdet_paper`` (``--paper-variant``): RobustDet as the paper writes it where the official code departs from
  it: the JS divergence inside the triplet hinge (``triplet_hinge="paper"``) and Eq. 5's printed weights
  (``loss_weighting="paper"``, which changes only the CFR terms, so nothing for a RobustDet without CFR).

A seed sets ``config.train.seed`` of every stage (initial weights, data order, the attacks' and the triplets' draws)
and the evaluation protocol's seed.  Per seed it also runs the mechanism diagnostics (``analysis/mechanism.py``) of
every RobustDet variant on the evaluation images under A_cls.

Output: one JSON line per finished seed appended to ``--out`` (when given; a seed already there for the same regime
and models is read back, not rerun), then one JSON line on stdout with every seed's table (mAP % with 95 % paired
bootstrap intervals), claims and diagnostics, and per claim the mean and standard deviation over the seeds, on how
many seeds it held on the point estimate and on how many its interval carried it (``demo.phenomenon`` defines the
claims).  ``--figure`` writes the trade-off picture: clean mAP against A_cls mAP of every model and seed, with each
cell's interval as error bars.  Progress goes to stderr.  Seeds whose folders already hold trained stages are
resumed, not retrained.

    python bench/phenomenon.py [--seeds 3] [--workdir /tmp/phenomenon] [--regime '{"epsilon": 8}'] \\
        [--paper-variant] [--out bench/results/x.jsonl] [--figure bench/results/x.png]
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_record, beside this script

import run_record  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from robustdet_tf import demo  # noqa: E402
from robustdet_tf.analysis.records import jsonable  # noqa: E402
from robustdet_tf.analysis.run import analyze_models  # noqa: E402
from robustdet_tf.checkpoints.integrity import load_model_file  # noqa: E402
from robustdet_tf.evaluation.report import save_figure_atomic  # noqa: E402
from robustdet_tf.evaluation.table_spec import TableSpec  # noqa: E402

ROBUSTDET_VARIANTS = ("robustdet", "robustdet_no_aid", "robustdet_paper")


STUDY_ATTACKS = ("clean", "A_cls", "A_loc", "CWA", "DAG", "Adaptive", "Transfer")
"""The study's columns: the demo's before it printed Corrupt and Patch, so every line of a study (and its lowest
attacked cell) compares the same attacks."""


def study_config(seed: int, regime: dict | None = None, paper_variant: bool = False,
                 attacks: tuple[str, ...] | None = None):
    """The demo config for one seed at ``regime`` (``with_regime`` keys), with the RobustDet-without-L_aid stage
    and, with ``paper_variant``, the paper's RobustDet; ``attacks`` replaces the table's columns."""
    config = demo_config.get_config()
    with config.unlocked():
        if attacks:
            config.eval.attacks = tuple(attacks)
        config.train.seed = int(seed)
        config.robustdet_no_aid = copy.deepcopy(config.robustdet)
        config.robustdet_no_aid.model.aid_weight = 0.0
        if paper_variant:
            config.robustdet_paper = copy.deepcopy(config.robustdet)
            config.robustdet_paper.model.triplet_hinge = "paper"
            config.robustdet_paper.model.loss_weighting = "paper"
        overrides = config.eval.overrides.to_dict()
        overrides["seed"] = int(seed)
        config.eval.overrides = overrides
        config.eval.sample_images = 0
    demo_config.with_regime(config, **(regime or {}))
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


def mechanism_of(config, models: dict, folder: str) -> dict:
    """The mechanism diagnostics of every RobustDet variant among ``models`` (``{}`` if none; the clean SSD, when
    there, is the transfer source of the demo's config), written to ``folder`` (read back when a resumed seed has
    them already)."""
    record = os.path.join(folder, "analysis.json")
    chosen = {name: models[name] for name in ("ssd", *ROBUSTDET_VARIANTS) if name in models}
    if not set(chosen) - {"ssd"}:
        return {}
    if os.path.exists(os.path.join(folder, "mechanism.json")) and os.path.exists(record):
        with open(os.path.join(folder, "mechanism.json"), encoding="utf-8") as handle:
            found = json.load(handle)
    else:
        os.makedirs(folder, exist_ok=True)
        found = analyze_models(config, chosen, folder, figures=("mechanism",),
                               printer=lambda _line: None)["summaries"]["mechanism"]
    return jsonable({name: {k: v for k, v in diag.items() if k != "kernel_spread_layers"}
                     for name, diag in found.items() if name != "ssd"})


def finished_run(config, folder: str, models: list[str]) -> dict | None:
    """The results and claims of a seed whose demo run finished its table in ``folder`` for this config and these
    models (a study interrupted after the table resumes without evaluating again); ``None`` otherwise."""
    path = os.path.join(folder, "robustness.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        results = json.load(handle)
    if list(results.get("models", {})) != models or results.get("table_spec") != json.loads(
            json.dumps(TableSpec.from_config(config.eval).to_dict())):
        return None
    print(f"{folder}: the table is there already; its claims are read back", file=sys.stderr, flush=True)
    return {"results": results, "phenomenon": demo.phenomenon(results)}


def tradeoff_figure(per_seed: list[dict], path: str, title: str) -> None:
    """Clean mAP (x) against A_cls mAP (y) of every model (colour) and seed (marker), each point with its cell's
    95 % interval as error bars in both directions."""
    figure = Figure(figsize=(6.4, 5.0))
    axes = figure.subplots()
    markers = "osD^v<>"
    models = list(per_seed[0]["table"])
    colours = {m: f"C{i}" for i, m in enumerate(models)}
    for index, seed in enumerate(per_seed):
        for model, row in seed["table"].items():
            (x, x_low, x_high), (y, y_low, y_high) = row["clean"], row["A_cls"]
            axes.errorbar(x, y, xerr=[[x - x_low], [x_high - x]], yerr=[[y - y_low], [y_high - y]],
                          fmt=markers[index % len(markers)], color=colours[model], capsize=2, markersize=5,
                          label=model if index == 0 else None)
    axes.set_xlabel("clean mAP (%)")
    axes.set_ylabel("A_cls mAP (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, title="model (marker: seed " + ", ".join(
        f"{markers[i % len(markers)]}={s['seed']}" for i, s in enumerate(per_seed)) + ")", title_fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def recorded_seeds(path: str | None, regime: dict, models: list[str], attacks: list[str]) -> dict[int, dict]:
    """The seeds ``path`` already holds for this regime, model set and table (torn lines are ignored)."""
    return {int(r["seed"]): r for r in run_record.read_lines(path)
            if (r.get("regime"), r.get("models"), r.get("attacks")) == (regime, models, attacks)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--workdir", default="/tmp/phenomenon")
    parser.add_argument("--regime", default="{}", help=f"JSON object of {demo_config.REGIME_KEYS} (missing: the "
                        "demo's)")
    parser.add_argument("--paper-variant", action="store_true", help="add RobustDet as the paper writes it")
    parser.add_argument("--out", default=None, help="JSON-lines file: one line per finished seed (resumed)")
    parser.add_argument("--figure", default=None, help="PNG of clean against A_cls mAP per model and seed")
    parser.add_argument("--attacks", default=None, help="comma-separated table columns (default: STUDY_ATTACKS); "
                        "the claims need clean and A_cls, CWA and the lowest cell use what is there")
    args = parser.parse_args(argv)
    regime = json.loads(args.regime)
    unknown = sorted(set(regime) - set(demo_config.REGIME_KEYS))
    if unknown:
        raise SystemExit(f"--regime has unknown key(s) {unknown}; use {demo_config.REGIME_KEYS}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    start = time.time()
    attacks = tuple(a.strip() for a in args.attacks.split(",")) if args.attacks else STUDY_ATTACKS
    config = study_config(0, regime, args.paper_variant, attacks)
    models = ["ssd", *[name for name in demo.EVALUATION_ORDER if name in config]]
    done = recorded_seeds(args.out, regime, models, list(config.eval.attacks))
    seeds = []
    for seed in range(args.seeds):
        if seed in done:
            print(f"seed {seed}: already in {args.out}", file=sys.stderr, flush=True)
            seeds.append(done[seed])
            continue
        began = time.time()
        seed_config = study_config(seed, regime, args.paper_variant, attacks)
        folder = os.path.join(args.workdir, f"seed_{seed}")
        out = finished_run(seed_config, folder, models) or demo.run(
            seed_config, folder, printer=lambda line: print(line, file=sys.stderr, flush=True),
            diagnostics_stage=False)
        trained = {name: load_model_file(os.path.join(folder, name, "model.keras"))
                   for name in ("ssd", *ROBUSTDET_VARIANTS) if name == "ssd" or name in seed_config}
        record = {
            "bench": "phenomenon", "regime": regime, "models": models, "attacks": list(seed_config.eval.attacks),
            "seed": seed,
            "num_images": int(seed_config.data.eval_images),
            "table": table_of(out["results"]),
            "claims": {k: {kk: (round(vv, 4) if isinstance(vv, float) else vv) for kk, vv in v.items()}
                       for k, v in out["phenomenon"].items()},
            "mechanism": mechanism_of(seed_config, trained, os.path.join(folder, "mechanism")),
            "seconds": round(time.time() - began, 1), "version": run_record.version(),
            "machine": run_record.machine(),
        }
        if args.out:
            with open(args.out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        seeds.append(record)
    summary_record = {
        "bench": "phenomenon",
        "regime": regime,
        "seeds": args.seeds,
        "num_images": int(config.data.eval_images),
        "epsilon": float(config.eval.overrides["pgd"]["epsilon"]),
        "adversarial_steps": int(config.robustdet.train.steps),
        "width": float(config.model.width),
        "attacks": list(config.eval.attacks),
        "models": models,
        "intervals": "95 % paired percentile bootstrap over the evaluation images, "
                     f"{config.eval.bootstrap.resamples} resamples",
        "claims": {k: {kk: round(vv, 4) if isinstance(vv, float) else vv for kk, vv in v.items()}
                   for k, v in summary([s["claims"] for s in seeds]).items()},
        "per_seed": seeds,
        "seconds": round(time.time() - start, 1),
    }
    if args.figure:
        tradeoff_figure(seeds, args.figure, f"ε = {summary_record['epsilon']:g}, {summary_record['adversarial_steps']}"
                        f" adversarial steps, width {summary_record['width']:g}, {summary_record['num_images']} "
                        f"images, {len(seeds)} seeds")
    print(json.dumps(summary_record), flush=True)
    return summary_record


if __name__ == "__main__":
    main()
