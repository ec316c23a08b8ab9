"""The embedded demo: the paper's phenomenon, end to end, on the synthetic shapes set in a few minutes of CPU.

1. train a small clean SSD (same structure as SSD300, 1/8 of the channels, 96×96 input);
2. expand it into RobustDet (K identical kernels, docs/reference.md#expanding-a-clean-ssd) and train that with
   the interleaved adversarial
   schedule;
3. train an SSD-AT baseline from the same clean SSD with the same schedule and budget (and, when the config has a
   ``robustdet_no_aid`` or ``robustdet_paper`` section as ``bench/phenomenon.py``'s does, RobustDet without L_aid
   and RobustDet as the paper writes it);
4. evaluate all of them under clean / A_cls / A_loc / CWA / DAG / Adaptive / Transfer with paired bootstrap
   intervals, write ``robustness.json``, the Markdown table, a bar plot and sample detections (clean vs attacked)
   to the workdir, and print the paper's claims with their intervals (``phenomenon``);
5. run the paper's cheap diagnostics (loss conflict, gradient entanglement, confidence and per-attack loss changes;
   not the PGD-step sweep, which ``--mode=analyze`` adds) into ``<workdir>/analysis`` and print one line per finding.

Each stage trains in its own sub-folder of the workdir with checkpoints, so an interrupted demo resumes.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping
from typing import Any

from robustdet_tf import initial_model as starts
from robustdet_tf import train as train_lib
from robustdet_tf.analysis.run import CHEAP_FIGURES, analyze_models
from robustdet_tf.checkpoints import integrity
from robustdet_tf.data.sources import load_source
from robustdet_tf.evaluation.from_config import evaluate_models
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.models.factory import is_routed
from robustdet_tf.workdir import check_training_settings


def stage_config(config, model_updates: dict, train_updates: dict):
    """A copy of the demo config with the model and training sections of one stage."""
    stage = copy.deepcopy(config)
    with stage.unlocked():
        for key, value in model_updates.items():
            stage.model[key] = value
        for key, value in train_updates.items():
            stage.train[key] = value
    return stage


def paired_difference(results: Mapping[str, Any], attack: str, model_a: str, model_b: str) -> dict[str, Any]:
    """``model_a − model_b`` under ``attack`` (or ``"Lowest"``) in mAP points with its paired bootstrap interval."""
    for d in results.get("differences", []):
        if d["attack"] != attack or {d["model_a"], d["model_b"]} != {model_a, model_b}:
            continue
        sign = 1.0 if d["model_a"] == model_a else -1.0
        bounds = [None if v is None else 100.0 * sign * v for v in (d["ci_low"], d["ci_high"])]
        low, high = (bounds if sign > 0 else bounds[::-1])
        return {"value": 100.0 * sign * d["difference"], "ci_low": low, "ci_high": high}
    raise KeyError(f"the results hold no paired difference of {model_a} and {model_b} under {attack}; evaluate "
                   "both models in one table with eval.bootstrap.resamples > 0.")


def _better(difference: dict[str, Any]) -> dict[str, Any]:
    """A claim that ``difference`` is positive: ``holds`` on the point estimate, ``significant`` if its interval
    lies above 0."""
    return {**difference, "holds": difference["value"] > 0,
            "significant": difference["ci_low"] is not None and difference["ci_low"] > 0}


def phenomenon(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's claims, checked on one table (docs/results/demo.md): each with its value, its interval where it is a
    paired difference (mAP points, 95 %), whether it holds on the point estimate and whether the interval carries it.

    Ratios (``ssd_collapses_under_A_cls``: SSD A_cls / clean < 0.2; ``robustdet_keeps_clean_map``: RobustDet clean /
    SSD clean ≥ 0.9) have no interval.  The differences: ``adversarial_training_helps`` (SSD-AT − SSD under A_cls)
    and RobustDet − SSD-AT on clean, A_cls, CWA and the lowest attacked cell; with a ``robustdet_no_aid`` model also
    RobustDet − RobustDet without L_aid under A_cls and on the lowest cell (the discriminator's share); with a
    ``robustdet_paper`` model, that model − SSD-AT on clean, under A_cls and on the lowest cell.
    """
    models = results["models"]
    ssd, rd = models["ssd"], models["robustdet"]
    eps = 1e-9
    ratio = ssd["A_cls"] / max(ssd["clean"], eps)
    keeps = rd["clean"] / max(ssd["clean"], eps)
    claims: dict[str, dict[str, Any]] = {
        "ssd_collapses_under_A_cls": {"value": ratio, "holds": ratio < 0.2},
        "robustdet_keeps_clean_map": {"value": keeps, "holds": keeps >= 0.9},
    }
    if "ssd_at" in models:
        claims["adversarial_training_helps"] = _better(paired_difference(results, "A_cls", "ssd_at", "ssd"))
        for attack, name in (("clean", "clean"), ("A_cls", "A_cls"), ("CWA", "CWA"), ("Lowest", "lowest")):
            if attack == "Lowest" or attack in rd:
                claims[f"robustdet_beats_ssd_at_{name}"] = _better(
                    paired_difference(results, attack, "robustdet", "ssd_at"))
    if "robustdet_no_aid" in models:
        for attack, name in (("A_cls", "A_cls"), ("Lowest", "lowest")):
            claims[f"aid_helps_{name}"] = _better(paired_difference(results, attack, "robustdet", "robustdet_no_aid"))
    if "robustdet_paper" in models and "ssd_at" in models:
        for attack, name in (("clean", "clean"), ("A_cls", "A_cls"), ("Lowest", "lowest")):
            claims[f"paper_variant_beats_ssd_at_{name}"] = _better(
                paired_difference(results, attack, "robustdet_paper", "ssd_at"))
    return claims


def claim_line(name: str, claim: Mapping[str, Any]) -> str:
    """One printed line per claim: ``name: value [low, high] → holds / holds with its interval / does not hold``."""
    if "ci_low" not in claim:
        return f"{name}: {claim['value']:.3g} → {'holds' if claim['holds'] else 'does not hold'}"
    verdict = ("holds, interval above 0" if claim["significant"] else
               "holds on the point estimate, interval includes 0" if claim["holds"] else "does not hold")
    interval = "" if claim["ci_low"] is None else f" [{claim['ci_low']:+.1f}, {claim['ci_high']:+.1f}]"
    return f"{name}: {claim['value']:+.1f} points{interval} → {verdict}"


def _train_from_ssd(config, stage, stage_dir: str, ssd, source, printer, prepare=None):
    """One stage started from the clean SSD (expanded or copied) unless its folder already holds checkpoints;
    ``prepare(model)`` may change a fresh start in place (the regime search's "kernels start apart")."""
    stage_cfg = stage_config(config, dict(stage.model), dict(stage.train))
    # without an intact checkpoint (none yet, or the first one's write died) the stage starts from the clean SSD
    fresh = not integrity.has_intact_checkpoint(os.path.join(stage_dir, "checkpoints"))
    if fresh:
        starts.seed_run(stage_cfg)  # the AID's initial weights follow the stage's seed
    init = starts.model_from_ssd(ssd, stage_cfg) if fresh else None
    if init is not None and prepare is not None:
        prepare(init)
    how = "K copies of every kernel" if is_routed(stage_cfg.model) else "its weights copied"
    return train_lib.train_in_workdir(stage_cfg, stage_dir, model=init, source=source, printer=printer,
                                      origin=f"the demo's clean SSD ({how})")


def diagnostics(config, models: dict, workdir: str, printer=print) -> list[str]:
    """Stage 5: the cheap diagnostics of the three models in ``<workdir>/analysis``; a resumed demo whose analysis
    is there already reports it again instead of recomputing it (like its trained stages)."""
    folder = os.path.join(workdir, "analysis")
    record = os.path.join(folder, "analysis.json")
    if os.path.exists(record):
        with open(record, encoding="utf-8") as handle:
            lines = json.load(handle)["findings"]
        printer(f"diagnostics already in {folder} (remove the folder to recompute them)")
    else:
        os.makedirs(folder, exist_ok=True)
        lines = analyze_models(config, models, folder, figures=CHEAP_FIGURES, printer=printer)["findings"]
    for line in lines:
        printer(f"finding: {line}")
    return lines


ADVERSARIAL_STAGES: dict[str, str] = {
    "robustdet": "RobustDet (expanded from the clean SSD, interleaved adversarial training)",
    "ssd_at": "SSD-AT baseline (from the clean SSD, same schedule)",
    "robustdet_no_aid": "RobustDet without L_aid (the ablation: AID loss weight 0, same model and schedule)",
    "robustdet_paper": "RobustDet as the paper writes it (JS divergence in the triplet hinge, Eq. 5's printed weights)",
}
"""The stages trained from the clean SSD, in order, each run when the config has a section of that name."""

EVALUATION_ORDER = ("ssd_at", "robustdet", "robustdet_no_aid", "robustdet_paper")
"""The rows of the table after the clean SSD."""


def run(config, workdir: str, printer=print, diagnostics_stage: bool = True) -> dict:
    """The demo's stages in ``workdir``: the clean SSD, every adversarial stage the config has, the robustness table
    with its claims, and (``diagnostics_stage``) the cheap diagnostics.  Returns the results, claims and findings."""
    start = time.time()
    stages = [name for name in ADVERSARIAL_STAGES if name in config]
    # every stage's training settings and the table's attack settings are checked before the first stage trains
    for stage in [stage_config(config, {}, {})] + [stage_config(config, dict(config[name].model),
                                                                dict(config[name].train)) for name in stages]:
        check_training_settings(stage)
    TableSpec.from_config(config.eval)
    os.makedirs(workdir, exist_ok=True)
    train_source = load_source(config.data, "train")
    total = 2 + len(stages) + int(diagnostics_stage)

    printer(f"== 1/{total} clean SSD ==")
    ssd_config = stage_config(config, {}, {})
    ssd = train_lib.train_in_workdir(ssd_config, os.path.join(workdir, "ssd"), source=train_source, printer=printer)
    trained = {}
    for number, name in enumerate(stages, start=2):
        printer(f"== {number}/{total} {ADVERSARIAL_STAGES[name]} ==")
        trained[name] = _train_from_ssd(config, config[name], os.path.join(workdir, name), ssd, train_source,
                                        printer)

    printer(f"== {len(stages) + 2}/{total} robustness evaluation ==")
    models = {"ssd": ssd, **{name: trained[name] for name in EVALUATION_ORDER if name in trained}}
    results = evaluate_models(config, models, workdir, printer=printer)
    claims = phenomenon(results)
    printer(f"claims on {results['num_images']} images (paired differences in mAP points, 95 % bootstrap "
            "intervals):")
    for name, claim in claims.items():
        printer(f"claim: {claim_line(name, claim)}")

    findings: list[str] = []
    if diagnostics_stage:
        printer(f"== {total}/{total} diagnostics (loss conflict, gradient entanglement, confidence, loss changes) ==")
        findings = diagnostics(config, models, workdir, printer=printer)
    printer(f"demo finished in {time.time() - start:.0f}s; outputs in {workdir}")
    return {"results": results, "phenomenon": claims, "findings": findings}
