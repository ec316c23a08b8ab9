"""The embedded demo: the paper's phenomenon, end to end, on the synthetic shapes set in a few minutes of CPU.

1. train a small clean SSD (same structure as SSD300, 1/8 of the channels, 96×96 input);
2. expand it into RobustDet (K identical kernels, spec §3.5) and train that with the interleaved adversarial
   schedule;
3. train an SSD-AT baseline from the same clean SSD with the same schedule and budget;
4. evaluate all three under clean / A_cls / A_loc / CWA / DAG / Adaptive and write ``robustness.json``, the
   Markdown table, a bar plot and sample detections (clean vs attacked) to the workdir;
5. run the paper's cheap diagnostics (loss conflict, gradient entanglement, confidence and per-attack loss changes;
   not the PGD-step sweep, which ``--mode=analyze`` adds) into ``<workdir>/analysis`` and print one line per finding.

Each stage trains in its own sub-folder of the workdir with checkpoints, so an interrupted demo resumes.
"""

from __future__ import annotations

import copy
import json
import os
import time

from robustdet_tf import train as train_lib
from robustdet_tf.analysis.run import CHEAP_FIGURES, analyze_models
from robustdet_tf.data.sources import load_source
from robustdet_tf.evaluation.from_config import evaluate_models


def stage_config(config, model_updates: dict, train_updates: dict):
    """A copy of the demo config with the model and training sections of one stage."""
    stage = copy.deepcopy(config)
    with stage.unlocked():
        for key, value in model_updates.items():
            stage.model[key] = value
        for key, value in train_updates.items():
            stage.train[key] = value
    return stage


def phenomenon(results: dict) -> dict:
    """The paper's claims, checked on the demo's numbers (see the README)."""
    models = results["models"]
    ssd, rd = models["ssd"], models["robustdet"]
    eps = 1e-9
    claims = {
        "ssd_collapses_under_A_cls": ssd["A_cls"] < 0.2 * ssd["clean"],
        "robustdet_keeps_clean_map": rd["clean"] >= 0.9 * ssd["clean"],
        "robustdet_A_cls_over_ssd": rd["A_cls"] / max(ssd["A_cls"], eps),
        "robustdet_A_cls_over_own_clean": rd["A_cls"] / max(rd["clean"], eps),
    }
    if rd.get("Adaptive") is not None:  # the attack that keeps the AID's mixture clean
        claims["robustdet_Adaptive_over_A_cls"] = rd["Adaptive"] / max(rd["A_cls"], eps)
    return claims


def _train_from_ssd(config, stage, stage_dir: str, ssd, source, printer):
    """One stage started from the clean SSD (expanded or copied) unless its folder already holds checkpoints."""
    stage_cfg = stage_config(config, dict(stage.model), dict(stage.train))
    fresh = not os.path.isdir(os.path.join(stage_dir, "checkpoints"))
    init = train_lib.model_from_ssd(ssd, stage_cfg) if fresh else None
    return train_lib.train_in_workdir(stage_cfg, stage_dir, model=init, source=source, printer=printer)


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


def run(config, workdir: str, printer=print) -> dict:
    start = time.time()
    os.makedirs(workdir, exist_ok=True)
    train_source = load_source(config.data, "train")

    printer("== 1/5 clean SSD ==")
    ssd_config = stage_config(config, {}, {})
    ssd = train_lib.train_in_workdir(ssd_config, os.path.join(workdir, "ssd"), source=train_source, printer=printer)

    printer("== 2/5 RobustDet (expanded from the clean SSD, interleaved adversarial training) ==")
    robustdet = _train_from_ssd(config, config.robustdet, os.path.join(workdir, "robustdet"), ssd, train_source,
                                printer)

    printer("== 3/5 SSD-AT baseline (from the clean SSD, same schedule) ==")
    ssd_at = _train_from_ssd(config, config.ssd_at, os.path.join(workdir, "ssd_at"), ssd, train_source, printer)

    printer("== 4/5 robustness evaluation ==")
    models = {"ssd": ssd, "ssd_at": ssd_at, "robustdet": robustdet}
    results = evaluate_models(config, models, workdir, printer=printer)
    claims = phenomenon(results)
    printer("phenomenon: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in claims.items()))

    printer("== 5/5 diagnostics (loss conflict, gradient entanglement, confidence, loss changes) ==")
    findings = diagnostics(config, models, workdir, printer=printer)
    printer(f"demo finished in {time.time() - start:.0f}s; outputs in {workdir}")
    return {"results": results, "phenomenon": claims, "findings": findings}
