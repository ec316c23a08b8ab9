"""The embedded demo: the paper's phenomenon, end to end, on the synthetic shapes set in a few minutes of CPU.

1. train a small clean SSD (same structure as SSD300, 1/8 of the channels, 96×96 input);
2. expand it into RobustDet (K identical kernels, spec §3.5) and train that with the interleaved adversarial
   schedule;
3. train an SSD-AT baseline from the same clean SSD with the same schedule and budget;
4. evaluate all three under clean / A_cls / A_loc / CWA / DAG and write ``robustness.json``, the Markdown table,
   a bar plot and sample detections (clean vs attacked) to the workdir.

Each stage trains in its own sub-folder of the workdir with checkpoints, so an interrupted demo resumes.
"""

from __future__ import annotations

import copy
import os
import time

from robustdet_tf import cli
from robustdet_tf import train as train_lib
from robustdet_tf.data.sources import load_source


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
    return {
        "ssd_collapses_under_A_cls": ssd["A_cls"] < 0.2 * ssd["clean"],
        "robustdet_keeps_clean_map": rd["clean"] >= 0.9 * ssd["clean"],
        "robustdet_A_cls_over_ssd": rd["A_cls"] / max(ssd["A_cls"], eps),
        "robustdet_A_cls_over_own_clean": rd["A_cls"] / max(rd["clean"], eps),
    }


def run(config, workdir: str, printer=print) -> dict:
    start = time.time()
    os.makedirs(workdir, exist_ok=True)
    train_source = load_source(config.data, "train")

    printer("== 1/4 clean SSD ==")
    ssd_config = stage_config(config, {}, {})
    ssd = cli.run_train(ssd_config, os.path.join(workdir, "ssd"), source=train_source, printer=printer)

    printer("== 2/4 RobustDet (expanded from the clean SSD, interleaved adversarial training) ==")
    rd_config = stage_config(config, dict(config.robustdet.model), dict(config.robustdet.train))
    rd_dir = os.path.join(workdir, "robustdet")
    fresh = not os.path.isdir(os.path.join(rd_dir, "checkpoints"))
    rd_init = train_lib.model_from_ssd(ssd, rd_config) if fresh else None
    robustdet = cli.run_train(rd_config, rd_dir, model=rd_init, source=train_source, printer=printer)

    printer("== 3/4 SSD-AT baseline (from the clean SSD, same schedule) ==")
    at_config = stage_config(config, dict(config.ssd_at.model), dict(config.ssd_at.train))
    at_dir = os.path.join(workdir, "ssd_at")
    fresh = not os.path.isdir(os.path.join(at_dir, "checkpoints"))
    at_init = train_lib.model_from_ssd(ssd, at_config) if fresh else None
    ssd_at = cli.run_train(at_config, at_dir, model=at_init, source=train_source, printer=printer)

    printer("== 4/4 robustness evaluation ==")
    results = cli.run_evaluate(config, workdir, models={"ssd": ssd, "ssd_at": ssd_at, "robustdet": robustdet},
                               printer=printer)
    claims = phenomenon(results)
    printer("phenomenon: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in claims.items()))
    printer(f"demo finished in {time.time() - start:.0f}s; outputs in {workdir}")
    return {"results": results, "phenomenon": claims}
