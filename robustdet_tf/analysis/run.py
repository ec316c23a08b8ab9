"""All of the paper's diagnostics for a set of models, as ``config.analysis`` describes them: JSON, PNGs, findings.

Why a module of its own: ``--mode=analyze`` and the demo both run the diagnostics on the models of a workdir;
they call ``analyze_models`` here, which prepares the data once (the first ``analysis.images`` evaluation images,
one training batch for the loss conflict), makes each model's adversarial images under ``analysis.attack`` with
the evaluation protocol's settings (``config.eval``), runs the requested figures and writes, per figure, one JSON
and one PNG:

* ``loss_conflict.json`` / ``fig3_loss_conflict.png`` (``loss_conflict.py``),
* ``entanglement.json`` / ``fig4_entanglement.png`` (``entanglement.py``),
* ``attack_statistics.json`` / ``fig5_loss_changes.png`` and ``fig7c_confidence.png`` (``confidence.py``),
* ``step_sweep.json`` / ``fig7ab_step_sweep.png`` (``step_sweep.py``),
* ``gradient_check.json``: per model, the images whose input gradient is zero or NaN/inf and whether the attack's
  loss rises along its PGD steps (``evaluation/gradient_check.py``),
* ``mechanism.json`` / ``mechanism_separation.png``: whether RobustDet's mechanism runs, i.e. the AID's separation
  of attacked from clean images, the kernels' spread and π's shift (``mechanism.py``), on ``mechanism_images``
  evaluation images (0: all of them) with the table's bootstrap intervals; when ``eval.transfer_source`` names one
  of the models, also the separation of images attacked through that model (``transfer``: an attack that cannot
  steer the AID's π, so what separates them is the AID's reading of the perturbation alone),

plus ``analysis.json`` (settings, models, one-line findings).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import keras

from robustdet_tf.analysis import (
    confidence,
    entanglement,
    loss_conflict,
    mechanism,
    plots,
    step_sweep,
)
from robustdet_tf.analysis.findings import findings
from robustdet_tf.analysis.records import write_json
from robustdet_tf.attacks.model_protocol import has_aid
from robustdet_tf.compiled import traced_once
from robustdet_tf.data import pipeline
from robustdet_tf.data.contract import check_labels_fit
from robustdet_tf.data.sources import load_source
from robustdet_tf.evaluation import gradient_check
from robustdet_tf.evaluation.evaluate import attack_targets, make_metric
from robustdet_tf.evaluation.protocol import PGD_METHODS, attack_spec, make_attack
from robustdet_tf.evaluation.table_spec import TableSpec

FIGURES = ("loss_conflict", "entanglement", "attack_statistics", "step_sweep", "mechanism", "gradient_check")
CHEAP_FIGURES = ("loss_conflict", "entanglement", "attack_statistics", "mechanism", "gradient_check")
"""What the demo runs: one attack per image and model (the mechanism's on every evaluation image, for the models
with an AID and the transfer source; the gradient check's one PGD run step by step); the step sweep, left out,
costs max(sweep_steps) steps per attack."""

DEFAULT_SETTINGS: dict[str, Any] = dict(
    figures=FIGURES,
    images=32,
    batch_size=8,
    attack="A_cls",
    conflict_steps=5,
    conflict_optimizer="sgd",
    conflict_learning_rate=1e-3,
    sweep_steps=(0, 1, 2, 5, 10, 20, 50),
    sweep_attacks=("A_cls", "A_loc"),
    attacks=("A_cls", "A_loc"),
    score_threshold=0.3,
    mechanism_images=0,
)
"""``config.analysis``: see docs/configuration.md (configs/common.py ``analysis_settings``)."""


def settings_of(config) -> dict[str, Any]:
    """``config.analysis`` over ``DEFAULT_SETTINGS`` (a config without the section gets the defaults); unknown keys
    are refused."""
    given = config.get("analysis", None) if hasattr(config, "get") else None
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given or {})
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(f"config.analysis has unknown keys {unknown}; accepted: {sorted(DEFAULT_SETTINGS)}.")
    out = {**DEFAULT_SETTINGS, **given}
    bad = [f for f in out["figures"] if f not in FIGURES]
    if bad:
        raise ValueError(f"config.analysis.figures names {bad}; choose from {FIGURES}.")
    if int(out["images"]) < 1 or int(out["batch_size"]) < 1:
        raise ValueError(f"config.analysis.images and .batch_size must be >= 1; got {out['images']}, "
                         f"{out['batch_size']}.")
    if int(out["mechanism_images"]) < 0:
        raise ValueError(f"config.analysis.mechanism_images must be >= 0 (0: every evaluation image); got "
                         f"{out['mechanism_images']}.")
    return out


def _batches(config, role: str, size: int, count: int, image_size: int) -> tuple[Any, list]:
    """The first ``count`` images (0: all) of the ``role`` source as a list of ``(images, targets)`` batches of
    ``size``."""
    source = load_source(config.data, role)
    dataset = pipeline.eval_batches(source.dataset.take(count or -1), image_size=image_size, batch_size=size,
                                    max_boxes=config.data.max_boxes)
    return source, [(images, attack_targets(targets)) for images, targets in dataset]


def _adversarial(attack: Callable, batches: list) -> list:
    """``(clean, attacked, targets)`` for each batch (``attack`` a compiled ``(images, targets) → images``)."""
    return [(images, attack(images, targets), targets) for images, targets in batches]


def check_models(models: Mapping[str, keras.Model]) -> int:
    """The models' common input size; refuses an empty set or mixed sizes."""
    if not models:
        raise ValueError("analysis: no models given; pass a dict name -> model (a workdir holding model.keras, or "
                         "sub-folders each holding one).")
    sizes = {int(getattr(m, "image_size", 0)) for m in models.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"analysis: the models take different input sizes {sorted(sizes)}; analyse them separately.")
    return sizes.pop()


def analyze_models(config, models: Mapping[str, keras.Model], output_dir: str,
                   figures: Sequence[str] | None = None, printer=print) -> dict[str, Any]:
    """Run ``figures`` (default ``config.analysis.figures``) for ``models``, write the files into ``output_dir``
    (created by the caller; see ``io.new_output_dir``) and return the summaries and ``findings``."""
    settings = settings_of(config)
    figures = list(figures if figures is not None else settings["figures"])
    image_size = check_models(models)
    table = TableSpec.from_config(config.eval)
    protocol = table.resolved_protocol()
    size, count = int(settings["batch_size"]), int(settings["images"])
    source, batches = _batches(config, "eval", size, count, image_size)
    for name, model in models.items():
        check_labels_fit(source, model.num_classes, model.class_names, f"the model {name!r}")
    attack = make_attack(settings["attack"], protocol)
    if attack is None:
        raise ValueError("config.analysis.attack must be an attack (e.g. 'A_cls'), not 'clean'.")
    train_batch = _batches(config, "train", size, size, image_size)[1][:1] if "loss_conflict" in figures else []
    mechanism_batches = (_batches(config, "eval", size, int(settings["mechanism_images"]), image_size)[1]
                         if "mechanism" in figures else [])
    # the AID's separation of images attacked through another model, which cannot steer π: the table's transfer
    # source (config.eval.transfer_source) when it is one of the models
    transfer_source, transferred = table.transfer_source, None
    summaries: dict[str, dict[str, Any]] = {figure: {} for figure in figures}
    raw: dict[str, dict[str, Any]] = {figure: {} for figure in figures}
    for name, model in models.items():
        printer(f"analysis of {name}: {', '.join(figures)}")
        attack_model = traced_once(partial(attack, model))
        triples = _adversarial(attack_model, batches) if {"loss_conflict", "entanglement"} & set(figures) else []
        if "entanglement" in figures:
            raw["entanglement"][name] = result = entanglement.gradient_entanglement(model, triples)
            summaries["entanglement"][name] = entanglement.summarize(result)
        if "loss_conflict" in figures:
            train = _adversarial(attack_model, train_batch)[0]
            raw["loss_conflict"][name] = result = loss_conflict.loss_conflict(
                model, train, triples, steps=int(settings["conflict_steps"]),
                optimizer=settings["conflict_optimizer"], learning_rate=float(settings["conflict_learning_rate"]))
            summaries["loss_conflict"][name] = loss_conflict.summarize(result)
        if "attack_statistics" in figures:
            attacks = {a: make_attack(a, protocol) for a in settings["attacks"]}
            raw["attack_statistics"][name] = result = confidence.attack_statistics(
                model, batches, attacks, float(settings["score_threshold"]))
            summaries["attack_statistics"][name] = confidence.summarize(result)
        if "step_sweep" in figures:
            metric = partial(make_metric, protocol["metric"], source.class_names,
                             offsets=protocol["voc_offsets"])
            specs = {a: attack_spec(a, protocol) for a in settings["sweep_attacks"]}
            summaries["step_sweep"][name] = step_sweep.step_sweep(model, batches, specs, settings["sweep_steps"],
                                                                  metric)
        if "gradient_check" in figures:
            checked = settings["attack"] if settings["attack"] in PGD_METHODS else "A_cls"  # DAG has no PGD step
            raw["gradient_check"][name] = result = gradient_check.gradient_check(
                model, batches, attack_spec(checked, protocol))
            summaries["gradient_check"][name] = {"attack": checked,
                                                 **{k: v for k, v in result.items() if k != "per_image"}}
        if "mechanism" in figures:
            pairs = ([(images, attack_model(images, targets)) for images, targets in mechanism_batches]
                     if has_aid(model) else [])
            raw["mechanism"][name] = result = mechanism.mechanism(model, pairs, table.bootstrap)
            summaries["mechanism"][name] = {k: v for k, v in result.items() if k != "per_image"}
            if has_aid(model) and transfer_source in models and transfer_source != name:
                if transferred is None:  # the source's attacked images, made once for every model with an AID
                    made = traced_once(partial(attack, models[transfer_source]))
                    transferred = [(images, made(images, targets)) for images, targets in mechanism_batches]
                moved = mechanism.mechanism(model, transferred, table.bootstrap)
                summaries["mechanism"][name]["transfer"] = {"source": transfer_source, **{
                    k: moved.get(k) for k in ("aid_auc", "aid_auc_ci_low", "aid_auc_ci_high", "pi_shift")}}
    paths = _write(output_dir, summaries, raw, settings)
    lines = findings(summaries, settings)
    record = {"settings": settings, "protocol": protocol, "models": list(models), "num_images": count,
              "figures": figures, "files": paths, "findings": lines}
    write_json(os.path.join(output_dir, "analysis.json"), record)
    return {"summaries": summaries, "findings": lines, "files": paths}


def _write(output_dir: str, summaries: Mapping[str, Any], raw: Mapping[str, Any], settings) -> list[str]:
    """The JSON and PNG files of each figure that ran; returns their names."""
    files = []

    def out(name: str) -> str:
        files.append(name)
        return os.path.join(output_dir, name)

    if "loss_conflict" in summaries:
        write_json(out("loss_conflict.json"), summaries["loss_conflict"])
        plots.plot_loss_conflict(raw["loss_conflict"], out("fig3_loss_conflict.png"), int(settings["conflict_steps"]))
    if "entanglement" in summaries:
        write_json(out("entanglement.json"), summaries["entanglement"])
        plots.plot_entanglement(summaries["entanglement"], out("fig4_entanglement.png"))
    if "attack_statistics" in summaries:
        write_json(out("attack_statistics.json"), summaries["attack_statistics"])
        plots.plot_loss_changes(raw["attack_statistics"], out("fig5_loss_changes.png"))
        plots.plot_confidence(raw["attack_statistics"], out("fig7c_confidence.png"))
    if "step_sweep" in summaries:
        write_json(out("step_sweep.json"), summaries["step_sweep"])
        plots.plot_step_sweep(summaries["step_sweep"], out("fig7ab_step_sweep.png"))
    if "gradient_check" in summaries:
        write_json(out("gradient_check.json"), summaries["gradient_check"])
    if "mechanism" in summaries:
        write_json(out("mechanism.json"), summaries["mechanism"])
        if any(r.get("has_aid") for r in raw["mechanism"].values()):
            plots.plot_mechanism(raw["mechanism"], out("mechanism_separation.png"), settings["attack"])
    return files
