"""The regime search of issue 32: where does the AID tell attacked images from clean ones, and where does adversarial
training pay?  One JSON line per finished setting, resumed from those lines.

A setting is the training = evaluation budget ``epsilon`` (α = ε, as the demo), the adversarial stage's length
``adversarial_steps``, the model's ``width`` (1/8 is the demo's), the ``seed`` of every stage and of the evaluation
protocol, and ``eval_images``.  Everything else is the demo's config (``configs/demo.py``): the clean SSD (1500 Adam
steps), then SSD-AT(A_cls) and RobustDet from it with the same schedule, then a table of clean and A_cls (PGD-10) on
the evaluation images with paired bootstrap intervals, and RobustDet's mechanism diagnostics
(``robustdet_tf/analysis/mechanism.py``) on the same images under the same A_cls.

The settings of one (ε, width, seed) share their stages: the shorter run is trained, evaluated and recorded, then
the same stages are trained on to the next length (a resume of the same run: the learning rate is constant, the
optimiser, the held attacked batch and the data order are in the checkpoint).  A stage folder that is not there
any more (a new session) is trained again from the clean SSD.

Each line holds ``epsilon``, ``adversarial_steps``, ``width``, ``seed``, ``eval_images``, ``aid_auc`` with
``aid_auc_ci_low`` / ``aid_auc_ci_high``, ``kernel_spread``, ``pi_shift`` (with its interval), the mean mixtures,
the AID loss at the end of training, the table's cells, the paired differences ``ssd_at_minus_ssd_A_cls``,
``robustdet_minus_ssd_at_A_cls``, ``robustdet_minus_ssd_at_clean`` (mAP points, ``{"value", "ci_low",
"ci_high"}``), the chance level of the separation (``aid_auc_at_start``: the same diagnostics of RobustDet as its
stage starts, ``start_control``), the separation of A_cls images made on the clean SSD (``aid_auc_transfer``: an
attack that cannot steer π), ``meets_aim`` (``aid_auc ≥ 0.9`` and ``ssd_at_minus_ssd_A_cls.ci_low > 0``), the
seconds of every part (the adversarial stages cumulative over the resumed lengths) and the version and machine.

    python bench/mechanism.py [--workdir runs/mechanism] [--out bench/results/mechanism.jsonl]
        [--settings '[{"epsilon": 4, "adversarial_steps": 400, "width": 0.125, "seed": 0}, ...]']
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time

import numpy as np
import tensorflow as tf

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run_record, beside this script

import run_record  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from robustdet_tf import demo  # noqa: E402
from robustdet_tf import initial_model as starts  # noqa: E402
from robustdet_tf import train as train_lib  # noqa: E402
from robustdet_tf.analysis import mechanism as mechanism_lib  # noqa: E402
from robustdet_tf.analysis.run import analyze_models  # noqa: E402
from robustdet_tf.checkpoints.integrity import load_model_file  # noqa: E402
from robustdet_tf.data.sources import load_source  # noqa: E402
from robustdet_tf.evaluation.from_config import evaluate_models  # noqa: E402

KEYS = ("epsilon", "adversarial_steps", "width", "seed", "eval_images", "variant")
NUMERIC_KEYS = KEYS[:-1]
DEFAULT_SETTING = {"epsilon": 2.0, "adversarial_steps": 400, "width": 0.125, "seed": 0, "eval_images": 150,
                   "variant": "base"}
VARIANTS = {
    "base": {},
    "k2": {"num_kernels": 2},
    "no_adc": {"adc": -1},
    "kernels_apart": {},
}
"""The targeted experiments on RobustDet's ingredients (the SSD and SSD-AT stages are the base's): K = 2 kernels
instead of 4, no ``adc`` sub-batch (clean images re-run with the attacked images' mixture: the reference's, not the
paper's), and K kernels that start apart (``KERNEL_JITTER``) instead of as identical copies of the clean SSD's."""
KERNEL_JITTER = 0.1
"""``kernels_apart``: every kernel k of every AAconv starts as W·(1 + 0.1·u_k), u_k uniform in [−1, 1] per
element (drawn from the stage's seed), so the mixture changes the output from the first step on."""
GRID = [{"width": w, "epsilon": e, "adversarial_steps": s}
        for w in (0.125, 0.25) for e in (2.0, 4.0, 8.0) for s in (400, 1600)]
"""The default search, cheapest first within a width: ε ∈ {2, 4, 8} × 400 and 1600 adversarial steps × width 1/8,
then the same at width 1/4."""

AUC_AIM = 0.9


def setting_key(setting: dict) -> tuple:
    """A setting's identity (lines written before variants existed are the base variant)."""
    return tuple(float(setting[k]) for k in NUMERIC_KEYS) + (setting.get("variant", "base"),)


def spread_kernels(model, scale: float = KERNEL_JITTER, seed: int = 0) -> None:
    """Move the K kernels of every AAconv apart: W_k ← W_k·(1 + scale·u_k), u_k ~ U(−1, 1) per element."""
    rng = np.random.default_rng(seed)
    for layer in mechanism_lib._aaconv_layers(model):
        kernel = layer.kernel.numpy()
        layer.kernel.assign(kernel * (1.0 + scale * rng.uniform(-1.0, 1.0, kernel.shape)).astype(kernel.dtype))


def configured(setting: dict, steps: int):
    """The demo config at ``setting`` (``configs/demo.py: with_regime``) with the adversarial stages' length
    ``steps``, the seed of every stage and of the protocol, and a clean / A_cls table."""
    config = demo_config.with_regime(demo_config.get_config(), epsilon=float(setting["epsilon"]),
                                     adversarial_steps=int(steps), width=float(setting["width"]),
                                     eval_images=int(setting["eval_images"]))
    with config.unlocked():
        config.train.seed = int(setting["seed"])
        config.eval.overrides = {**config.eval.overrides.to_dict(), "seed": int(setting["seed"])}
        config.eval.attacks = ("clean", "A_cls")
        config.eval.sample_images = 0
        config.analysis.batch_size = int(config.eval.batch_size)
        variant = setting.get("variant", "base")
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
        for key, value in VARIANTS[variant].items():
            config.robustdet.model[key] = value
    return config


def _tag(setting: dict) -> str:
    return f"w{setting['width']:g}_s{int(setting['seed'])}"


def final_loss_aid(lines: list[str]) -> float | None:
    """The AID loss of the last training log line (``loss_aid=…``), if any."""
    for line in reversed(lines):
        found = re.search(r"loss_aid=([0-9.eE+-]+)", line)
        if found:
            return float(found.group(1))
    return None


def _control_key(setting: dict) -> tuple:
    return tuple(float(setting[k]) for k in ("epsilon", "width", "seed", "eval_images")) + (
        setting.get("variant", "base"),)


def _robustdet_dir(workdir: str, stage_tag: str, setting: dict) -> str:
    variant = setting.get("variant", "base")
    return os.path.join(workdir, f"robustdet_{stage_tag}" + ("" if variant == "base" else f"_{variant}"))


def _prepare(setting: dict):
    """What a fresh RobustDet start of ``setting``'s variant gets done to it (``None``: nothing)."""
    if setting.get("variant", "base") != "kernels_apart":
        return None
    return lambda model: spread_kernels(model, KERNEL_JITTER, int(setting["seed"]))


def run_setting(setting: dict, workdir: str, seconds_so_far: dict, controls: dict) -> dict:
    """Train (or resume) the stages of ``setting`` to its length, evaluate, diagnose; the JSON record."""
    config = configured(setting, int(setting["adversarial_steps"]))
    quiet = lambda _line: None  # noqa: E731
    timings = {}
    start = time.perf_counter()
    ssd = train_lib.train_in_workdir(demo.stage_config(config, {}, {}), os.path.join(workdir, f"ssd_{_tag(setting)}"),
                                     printer=quiet)
    timings["ssd_s"] = time.perf_counter() - start
    source = load_source(config.data, "train")
    stage_tag = f"{_tag(setting)}_e{setting['epsilon']:g}"
    models, logs = {"ssd": ssd}, []
    for name in ("ssd_at", "robustdet"):
        stage_dir = (_robustdet_dir(workdir, stage_tag, setting) if name == "robustdet"
                     else os.path.join(workdir, f"{name}_{stage_tag}"))
        # a stage trained on from a shorter recorded length counts that length's seconds too
        before = seconds_so_far.get(f"{name}_s", 0.0) if os.path.isdir(os.path.join(stage_dir, "checkpoints")) else 0.0
        start = time.perf_counter()
        models[name] = demo._train_from_ssd(config, config[name], stage_dir, ssd, source,
                                            logs.append if name == "robustdet" else quiet,
                                            prepare=_prepare(setting) if name == "robustdet" else None)
        timings[f"{name}_s"] = before + time.perf_counter() - start
    variant = setting.get("variant", "base")
    tag = (f"{stage_tag}_n{int(setting['adversarial_steps'])}_i{int(setting['eval_images'])}"
           + ("" if variant == "base" else f"_{variant}"))
    start = time.perf_counter()
    results = evaluate_models(config, models, os.path.join(workdir, f"eval_{tag}"), printer=quiet)
    timings["eval_s"] = time.perf_counter() - start
    start = time.perf_counter()
    folder = os.path.join(workdir, f"mechanism_{tag}")
    os.makedirs(folder, exist_ok=True)
    # with the clean SSD as the table's transfer source: also the separation of images it cannot steer
    diag = analyze_models(config, {"ssd": ssd, "robustdet": models["robustdet"]}, folder, figures=("mechanism",),
                          printer=quiet)["summaries"]["mechanism"]["robustdet"]
    timings["mechanism_s"] = time.perf_counter() - start
    difference = {
        "ssd_at_minus_ssd_A_cls": demo.paired_difference(results, "A_cls", "ssd_at", "ssd"),
        "robustdet_minus_ssd_at_A_cls": demo.paired_difference(results, "A_cls", "robustdet", "ssd_at"),
        "robustdet_minus_ssd_at_clean": demo.paired_difference(results, "clean", "robustdet", "ssd_at"),
    }
    record = {
        "bench": "mechanism", **{k: setting[k] for k in KEYS}, "robustdet_model": VARIANTS[variant],
        "aid_auc": diag["aid_auc"], "aid_auc_ci_low": diag.get("aid_auc_ci_low"),
        "aid_auc_ci_high": diag.get("aid_auc_ci_high"), "auc_score": diag["score"],
        "kernel_spread": diag["kernel_spread"], "pi_shift": diag["pi_shift"],
        "pi_shift_ci_low": diag.get("pi_shift_ci_low"), "pi_shift_ci_high": diag.get("pi_shift_ci_high"),
        "aid_auc_transfer": (diag.get("transfer") or {}).get("aid_auc"),
        "aid_auc_transfer_ci_low": (diag.get("transfer") or {}).get("aid_auc_ci_low"),
        "aid_auc_transfer_ci_high": (diag.get("transfer") or {}).get("aid_auc_ci_high"),
        "pi_clean_mean": [float(v) for v in diag["pi_clean_mean"]],
        "pi_adv_mean": [float(v) for v in diag["pi_adv_mean"]],
        "final_loss_aid": final_loss_aid(logs), "triplet_margin": float(config.robustdet.model["triplet_margin"]),
        "cells": {m: {a: [round(100 * c[k], 2) for k in ("mAP", "ci_low", "ci_high")] for a, c in row.items()}
                  for m, row in results["cells"].items()},
        **{k: {kk: round(vv, 2) + 0.0 for kk, vv in v.items()} for k, v in difference.items()},
    }
    record.update(controls.get(_control_key(setting)) or start_control(setting, workdir))
    record["meets_aim"] = bool(record["aid_auc"] >= AUC_AIM and difference["ssd_at_minus_ssd_A_cls"]["ci_low"] > 0)
    record["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    record["version"] = run_record.version()
    record["machine"] = run_record.machine()
    return record


def start_control(setting: dict, workdir: str) -> dict:
    """The chance level of the separation: the mechanism diagnostics of RobustDet as its adversarial stage starts
    (expanded from the clean SSD with the stage's seed: K identical kernels, the AID as initialised), on the same
    evaluation images under A_cls.  Its kernels are equal, so π cannot change its output and A_cls cannot aim at
    the AID; whatever AUC it has comes from how an untrained AID reacts to ε-bounded noise."""
    config = configured(setting, int(setting["adversarial_steps"]))
    ssd = train_lib.load_trained_model(os.path.join(workdir, f"ssd_{_tag(setting)}"), config)
    stage = demo.stage_config(config, dict(config.robustdet.model), dict(config.robustdet.train))
    starts.seed_run(stage)
    start = starts.model_from_ssd(ssd, stage)
    prepare = _prepare(setting)
    if prepare is not None:
        prepare(start)
    folder = os.path.join(workdir, f"control_{_tag(setting)}_e{setting['epsilon']:g}_i{int(setting['eval_images'])}_"
                          f"{setting.get('variant', 'base')}")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    diag = analyze_models(config, {"robustdet_at_start": start}, folder, figures=("mechanism",),
                          printer=lambda _line: None)["summaries"]["mechanism"]["robustdet_at_start"]
    return {"aid_auc_at_start": diag["aid_auc"], "aid_auc_at_start_ci_low": diag.get("aid_auc_ci_low"),
            "aid_auc_at_start_ci_high": diag.get("aid_auc_ci_high"), "pi_shift_at_start": diag["pi_shift"]}


def recorded(path: str) -> dict[tuple, dict]:
    """The finished settings of ``path`` by ``setting_key`` (a torn last line is ignored: it is run again)."""
    return {setting_key(record): record for record in run_record.read_lines(path)}


def transfer_separation(setting: dict, workdir: str) -> dict | None:
    """``aid_auc_transfer`` of a recorded setting whose RobustDet stage still holds its model at that length (the
    newest checkpoint is of that step), else ``None``."""
    config = configured(setting, int(setting["adversarial_steps"]))
    stage_dir = _robustdet_dir(workdir, f"{_tag(setting)}_e{setting['epsilon']:g}", setting)
    latest = tf.train.latest_checkpoint(os.path.join(stage_dir, "checkpoints"))
    if latest is None or int(latest.rsplit("-", 1)[1]) != int(setting["adversarial_steps"]) or not os.path.exists(
            os.path.join(stage_dir, "model.keras")):
        return None
    ssd = load_model_file(os.path.join(workdir, f"ssd_{_tag(setting)}", "model.keras"))
    robust = load_model_file(os.path.join(stage_dir, "model.keras"))
    folder = os.path.join(workdir, f"transfer_{os.path.basename(stage_dir)}_n{int(setting['adversarial_steps'])}")
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    diag = analyze_models(config, {"ssd": ssd, "robustdet": robust}, folder, figures=("mechanism",),
                          printer=lambda _line: None)["summaries"]["mechanism"]["robustdet"]["transfer"]
    return {"aid_auc_transfer": diag["aid_auc"], "aid_auc_transfer_ci_low": diag.get("aid_auc_ci_low"),
            "aid_auc_transfer_ci_high": diag.get("aid_auc_ci_high")}


def add_missing_controls(path: str, done: dict, workdir: str) -> None:
    """Lines recorded before the start control or the transfer separation existed get them where ``workdir``
    still holds what they need (the clean SSD; the RobustDet stage at that length); the file is rewritten
    atomically with them."""
    changed = False
    found = {}
    for record in done.values():
        if "aid_auc_at_start" not in record and os.path.exists(
                os.path.join(workdir, f"ssd_{_tag(record)}", "model.keras")):
            key = _control_key(record)
            if key not in found:
                found[key] = start_control(record, workdir)
            record.update(found[key])
            changed = True
        if record.get("aid_auc_transfer") is None:
            extra = transfer_separation({**DEFAULT_SETTING, **record}, workdir)
            if extra is not None:
                record.update(extra)
                changed = True
    if not changed:
        return
    lines = [json.dumps(r) for r in done.values()]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def plan(settings: list[dict]) -> list[dict]:
    """Full settings (defaults filled in), grouped so one (width, seed, ε)'s lengths run shortest first."""
    full = []
    for update in settings:
        unknown = sorted(set(update) - set(KEYS))
        if unknown:
            raise SystemExit(f"unknown setting key(s) {unknown}; use {KEYS}")
        full.append({**DEFAULT_SETTING, **update})
    order = {}
    group = lambda s: (s["width"], s["seed"], s["epsilon"], s["eval_images"], s["variant"])  # noqa: E731
    for s in full:
        order.setdefault(group(s), len(order))
    return sorted(full, key=lambda s: (order[group(s)], s["adversarial_steps"]))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/mechanism")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "mechanism.jsonl"))
    parser.add_argument("--settings", default=None, help="JSON list of settings (missing keys: "
                        f"{DEFAULT_SETTING}); default: the grid {GRID}")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    settings = plan(json.loads(args.settings) if args.settings else GRID)
    done = recorded(args.out)
    add_missing_controls(args.out, done, args.workdir)
    controls = {_control_key(r): {k: v for k, v in r.items() if "at_start" in k} for r in done.values()
                if "aid_auc_at_start" in r}
    out, seconds = [], {}
    for setting in settings:
        group = (setting["width"], setting["seed"], setting["epsilon"], setting["variant"])
        if setting_key(setting) in done:
            record = done[setting_key(setting)]
            print(f"already recorded: {json.dumps({k: setting[k] for k in KEYS})}", file=sys.stderr, flush=True)
            seconds[group] = {k: v for k, v in record["seconds"].items() if k in ("ssd_at_s", "robustdet_s")}
            out.append(record)
            continue
        print(f"running: {json.dumps({k: setting[k] for k in KEYS})}", file=sys.stderr, flush=True)
        record = run_setting(setting, args.workdir, seconds.get(group, {}), controls)
        controls[_control_key(setting)] = {k: v for k, v in record.items() if "at_start" in k}
        seconds[group] = {k: v for k, v in record["seconds"].items() if k in ("ssd_at_s", "robustdet_s")}
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        out.append(record)
    return out


if __name__ == "__main__":
    main()
