"""The paper's robustness table: mAP of several detectors under several attacks (spec §5, §7; Table 1).

Table 1 is a grid (models × attacks) evaluated under one *protocol* (``evaluation.protocol``: ``"reference"`` as
``eval_attack.py`` runs it, or ``"strong"``).  Every (model, attack) cell is evaluated batched (attack and
detection in one ``tf.function`` per batch, split over the replicas of a strategy if given; the attack sees targets
with difficult objects removed, as the reference's) through the shard engine of ``evaluation.sharded``: shards of
consecutive batches, their metric states saved and merged in order (the one-pass metric exactly), resumable after an
interruption, and divided among the workers of a ``TF_CONFIG`` cluster.

Outputs (``evaluation.report``, each written atomically):

* ``robustness.json`` — ``{"protocol": {...}, "models": {name: {attack: mAP}}, "num_images": n,
  "per_class_AP": {name: {attack: {class: AP}}}, "worst_case": {name: {"attack": a, "mAP": m}}}``, mAP and AP as
  fractions in [0, 1] (``null`` if undefined or not applicable); ``worst_case`` is each model's lowest attacked
  cell (the ``Worst`` column, if requested, is the per-image worst case and usually lower still).  With intervals
  (``bootstrap.resamples > 0``, the default) also ``"cells": {name: {attack: {"mAP", "ci_low", "ci_high"}}}``,
  ``ci_low``/``ci_high`` in each ``worst_case`` entry, ``"differences": [{"attack", "model_a", "model_b",
  "difference", "ci_low", "ci_high"}]`` (model_a − model_b for every pair of models under every attack) and
  ``"bootstrap"`` (its settings): paired percentile bootstrap over images (``evaluation.bootstrap``);
* ``robustness.md`` — a Markdown table laid out like the paper's Table 1 (rows models, columns attacks, mAP in %,
  intervals in brackets), then the paired differences;
* ``pr_<model>_<attack>.png`` — per-class precision/recall curves of every cell (VOC metrics only);
* ``robustness_bars.png`` — grouped bars of mAP per model per attack, intervals as error bars;
* optionally ``samples/<model>_<attack>_<i>.png`` — clean vs attacked detections of the first images.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.evaluation import shard_plan, sharded
from robustdet_tf.evaluation.bootstrap import BootstrapSpec, table_intervals, with_intervals
from robustdet_tf.evaluation.evaluate import AttackFn, detection_step, make_metric
from robustdet_tf.evaluation.progress import TableProgress
from robustdet_tf.evaluation.protocol import (  # noqa: F401  (re-exported: the table's public vocabulary)
    ATTACKS,
    COLUMN_TITLES,
    PAPER_ATTACKS,
    PGD_METHODS,
    PROTOCOLS,
    column_applies,
    describe_protocol,
    make_attack,
    make_protocol,
)
from robustdet_tf.evaluation.replicas import batch_step
from robustdet_tf.evaluation.report import (  # noqa: F401  (markdown_table is re-exported)
    file_stem,
    fraction,
    markdown_table,
    plot_bars,
    plot_pr_curves,
    write_sample_pngs,
)
from robustdet_tf.evaluation.transfer import TRANSFER_BASE, same_cell, transfer_attack
from robustdet_tf.evaluation.worst_case import worst_case_attack, worst_column
from robustdet_tf.io import workdir_lock, write_text


def save_sample_detections(
    model: keras.Model,
    images: tf.Tensor,
    targets: Mapping[str, tf.Tensor],
    output_dir: str,
    attack: AttackFn | None,
    attack_name: str = "attack",
    class_names: Sequence[str] | None = None,
    num_images: int = 4,
    score_threshold: float = 0.3,
    prefix: str | None = None,
    top_n: int = 10,
) -> list[str]:
    """Draw clean vs attacked detections (red) with the ground truth (dashed white) for the first images.

    The first ``num_images`` images of the batch are attacked and detected together (one batched call each for
    the clean and the attacked pass).  Writes ``<prefix>_<i>.png`` (default prefix: the file-safe attack name) and
    returns the paths.
    """
    if num_images < 1:
        raise ValueError(f"save_sample_detections: num_images must be >= 1, got {num_images}.")
    images = tf.convert_to_tensor(images, tf.float32)[:num_images]
    targets = {k: v[:num_images] for k, v in targets.items()}
    clean_dets, _ = detection_step(model, None)(images, targets)
    adv_dets, adv = detection_step(model, attack)(images, targets)
    return write_sample_pngs(images, clean_dets, adv, adv_dets, targets, output_dir,
                             prefix or file_stem(attack_name), class_names, num_images, score_threshold,
                             attack_name, top_n=top_n)


# -- the table ----------------------------------------------------------------------------------------------------
def column_attack(name: str, protocol: Mapping[str, Any], columns: Sequence[str], model: keras.Model,
                  source: keras.Model | None = None):
    """The attack of column ``name`` for ``model``; ``Worst`` combines the other attacks of ``columns`` that apply
    to the model; ``Transfer`` is A_cls made against ``source`` (the table's transfer source)."""
    if name == "Transfer":
        if source is None:
            raise ValueError("the 'Transfer' column needs a source model (eval.transfer_source).")
        return transfer_attack(source, make_attack(TRANSFER_BASE, protocol))
    if name != "Worst":
        return make_attack(name, protocol)
    return worst_case_attack([column_attack(c, protocol, columns, model, source) for c in columns
                              if c not in ("clean", "Worst") and column_applies(c, model)])


def _headline(metric_result: Mapping[str, Any]) -> float:
    """The table's number: ``mAP`` (VOC) or ``AP50`` (COCO, what the paper reports)."""
    for key in ("mAP", "AP50"):
        if key in metric_result:
            return float(metric_result[key])
    raise KeyError(f"the metric result has neither 'mAP' nor 'AP50' (keys {sorted(metric_result)}).")


def evaluate_robustness(
    models: Mapping[str, keras.Model],
    batches: tf.data.Dataset,
    class_names: Sequence[str],
    output_dir: str | os.PathLike,
    attacks: Sequence[str] = PAPER_ATTACKS,
    protocol: str | Mapping[str, Any] = "reference",
    overrides: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    metric_factory: Callable[[], Any] | None = None,
    plots: bool = True,
    sample_images: int = 0,
    sample_score_threshold: float = 0.3,
    sample_top_n: int = 10,
    shard_batches: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
    shard_timeout: float = 3600.0,
    data: Mapping[str, Any] | None = None,
    workers: sharded.Workers | None = None,
    printer: Callable[[str], None] | None = None,
    bootstrap: BootstrapSpec | Mapping[str, Any] | None = None,
    transfer_source: str | None = None,
) -> dict[str, Any] | None:
    """Evaluate every model under every attack and write the table, JSON and figures to ``output_dir``.

    Every cell goes through the shard engine (``evaluation.sharded``): its batches are cut into shards of
    ``shard_batches`` consecutive batches whose metric states are saved under ``output_dir/shards`` and merged in
    order, which gives the one-pass metric bit for bit.  A rerun into the same folder after an interruption reuses
    the finished shards; under ``TF_CONFIG`` each worker computes its own shards and only the chief writes the
    table (after waiting for the others' shards).  The shard files are removed once the table is written.

    Args:
      models: name → detector (any model of the package: pixel input, ``detect``, ``detection_loss``); under a
        ``strategy`` with several replicas, built or loaded under its scope.
      batches: evaluation batches ``(images, targets)`` as ``data.pipeline.eval_batches`` yields them (targets with
        ``difficult`` and ``original_size`` for the faithful VOC metric).  Iterated once per (model, attack).
      class_names: object class names (label ``k`` ↔ name ``k``).
      attacks: columns, from ``ATTACKS`` (default: Table 1's); ``Worst`` = per image the worst of the other
        attack columns.
      protocol, overrides: see ``make_protocol``.
      max_batches: evaluate only the first batches (quick looks).
      metric_factory: builds a fresh metric per cell; default ``make_metric(protocol["metric"], class_names,
        reference_offsets=protocol["reference_offsets"])`` (COCO needs a factory with its annotations).
      plots: write the PR curves and the bar plot.
      sample_images: if > 0, also draw clean vs attacked detections of that many first-batch images per cell.
      sample_score_threshold, sample_top_n: the pictures show at most ``sample_top_n`` detections per image, those
        scoring at least ``sample_score_threshold`` (the metric itself uses every detection).
      shard_batches: batches per shard (``None``: the whole set is one shard).
      strategy: split each batch over its replicas (``evaluation.replicas``); ``None``: one device.
      shard_timeout: seconds the chief waits for shards other workers compute.
      data: what identifies the evaluation data (name, batch size, ...), recorded in the plan a resume must match.
      workers: this process's place among the workers (default: from ``TF_CONFIG``).
      printer: receives the progress lines (``evaluation.progress``: one per finished cell, and inside a long cell
        one at most every 30 s with images done and time left) and one line on how many shards were computed and
        reused (on a resume or a worker); ``None``: silent.
      bootstrap: resamples, seed and level of the paired bootstrap intervals over images (``evaluation.bootstrap``;
        default ``BootstrapSpec()``: 1000 resamples, seed 0, 95 %); ``resamples=0`` writes no intervals.  Computed
        from the merged metric states after the shards, so they are the same however the table was computed.
      transfer_source: the model whose A_cls images the ``Transfer`` column evaluates every model on (default: the
        first model).

    Returns the dict written to ``robustness.json``, or ``None`` on a worker that is not the chief.
    """
    if not models:
        raise ValueError("evaluate_robustness: no models given; pass a dict name -> model.")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"evaluate_robustness: unknown attack(s) {unknown} (or none given); choose from {ATTACKS}.")
    if shard_batches is not None and int(shard_batches) < 1:
        raise ValueError(f"evaluate_robustness: shard_batches must be >= 1 (or None: one shard), got {shard_batches}.")
    stems = {}
    for name in models:
        stems.setdefault(file_stem(name), []).append(name)
    clash = [names for names in stems.values() if len(names) > 1]
    if clash:
        raise ValueError(f"evaluate_robustness: the model names {clash[0]} give the same file name; rename one.")
    proto = make_protocol(protocol, overrides)
    bootstrap = bootstrap if isinstance(bootstrap, BootstrapSpec) else BootstrapSpec.from_mapping(bootstrap)
    source_name = transfer_source or next(iter(models))
    if "Transfer" in attacks and source_name not in models:
        raise ValueError(f"evaluate_robustness: the transfer source {source_name!r} is not one of the models "
                         f"{list(models)}; set eval.transfer_source to one of them.")
    source = models[source_name] if "Transfer" in attacks else None
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if metric_factory is None:
        metric_factory = partial(make_metric, proto["metric"], class_names,
                                 reference_offsets=proto["reference_offsets"])
    if max_batches is not None:
        batches = batches.take(max_batches)
    workers = workers or sharded.Workers.from_environment()
    # One evaluation per output folder (per worker of a TF_CONFIG cluster, which share it by design): a second run
    # into the folder is refused, naming the holder, so a finishing run never removes shards another is reading.
    with workdir_lock(output_dir, name=f".lock-worker{workers.index}", what="--output_dir"):
        plan_data = {"class_names": list(class_names), "max_batches": max_batches, **(data or {})}
        if source is not None:
            plan_data["transfer_source"] = source_name
        plan = shard_plan.make_plan(models, attacks, proto, shard_batches, metric_factory(), plan_data)
        shard_plan.check_plan(output_dir, plan)

        first_batch: dict[str, dict[str, tuple]] = {name: {} for name in models}
        cells = [(m, a) for m in models for a in attacks if column_applies(a, models[m])]
        computed_cells = [(m, a) for m, a in cells if same_cell(m, a, source_name if source else None, attacks) is None]
        known = (data or {}).get("num_examples") if max_batches is None and workers.count == 1 else None
        progress = TableProgress(computed_cells, known, printer) if printer is not None else None
        computed = reused = 0
        for model_name, attack_name in computed_cells:
            model = models[model_name]
            step = batch_step(model, column_attack(attack_name, proto, attacks, model, source), strategy)
            keep = sample_images > 0 and workers.chief

            def on_batch(index, clean, adv, detections, kept=first_batch[model_name], attack_name=attack_name,
                         keep=keep):
                if keep and index == 0:
                    kept[attack_name] = (clean, adv, detections)
                if progress is not None:
                    progress.batch_done(int(clean.shape[0]))

            if progress is not None:
                progress.start_cell(model_name, attack_name)
            done = sharded.compute_shards(sharded.cell_dir(output_dir, model_name, attack_name), batches, step,
                                          metric_factory, shard_batches, workers, on_batch=on_batch)
            if progress is not None:
                progress.end_cell(reused=done[0] == 0 and done[1] > 0)
            computed, reused = computed + done[0], reused + done[1]
        if printer is not None and (reused or workers.count > 1):  # a fresh one-process run says nothing extra
            printer(f"worker {workers.index} of {workers.count}: computed {computed} shards, reused {reused} finished "
                    f"shards ({len(cells)} cells)")
        if not workers.chief:
            return None

        table: dict[str, dict[str, float | None]] = {name: {} for name in models}
        per_class: dict[str, dict[str, dict[str, float | None]]] = {name: {} for name in models}
        num_images = 0
        matches = {}
        for model_name, model in models.items():
            for attack_name in attacks:
                if (model_name, attack_name) not in cells:  # e.g. the AID column of a model without an AID
                    table[model_name][attack_name], per_class[model_name][attack_name] = None, {}
                    continue
                stored = same_cell(model_name, attack_name, source_name if source else None, attacks) or attack_name
                metric = sharded.merged_metric(sharded.cell_dir(output_dir, model_name, stored), metric_factory,
                                               shard_batches, workers, shard_timeout,
                                               what=f"the cell ({model_name}, {stored})")
                metric_result = metric.result()
                table[model_name][attack_name] = fraction(_headline(metric_result))
                if bootstrap.resamples:
                    matches[(model_name, attack_name)] = metric.ranked_matches()
                ap_key = "AP" if "AP" in metric_result else "per_class_AP50"
                per_class[model_name][attack_name] = {k: fraction(v) for k, v in metric_result.get(ap_key, {}).items()}
                num_images = int(metric_result.get("num_images", num_images))
                if plots and "recall" in metric_result:
                    plot_pr_curves(metric_result, f"{model_name} / {COLUMN_TITLES.get(attack_name, attack_name)}",
                                   os.path.join(output_dir, f"pr_{file_stem(model_name)}_{file_stem(attack_name)}.png"))
            if sample_images > 0:
                applicable = [a for a in attacks if (model_name, a) in cells]
                for attack_name in applicable:
                    stored = same_cell(model_name, attack_name, source_name if source else None, attacks)
                    if stored in first_batch[model_name]:
                        first_batch[model_name].setdefault(attack_name, first_batch[model_name][stored])
                _samples_for_model(model, model_name, first_batch[model_name], batches, output_dir, class_names,
                                   sample_images, (sample_score_threshold, sample_top_n),
                                   {a: column_attack(a, proto, attacks, model, source) for a in applicable})

        worst = {name: worst_column(table[name]) for name in models}
        results = {"protocol": proto, "models": table, "num_images": num_images, "per_class_AP": per_class,
                   "worst_case": worst}
        if source is not None:
            results["transfer_source"] = source_name
        if bootstrap.resamples:
            results.update(with_intervals(table, worst, table_intervals(matches, list(models), list(attacks),
                                                                        bootstrap), bootstrap, num_images))
        write_text(os.path.join(output_dir, "robustness.json"), json.dumps(results, indent=2) + "\n")
        write_text(os.path.join(output_dir, "robustness.md"), markdown_table(results))
        if plots:
            plot_bars(results, os.path.join(output_dir, "robustness_bars.png"))
        shutil.rmtree(sharded.shards_root(output_dir), ignore_errors=True)  # the table is final; see the docstring
        return results


def _samples_for_model(model, model_name, first_batch, batches, output_dir, class_names, num_images, shown,
                       cell_attacks):
    """Reuse the first batch each attack produced in this run (the clean detections come from the clean column);
    a cell whose first shard was computed earlier or by another worker attacks the first batch again."""
    if not cell_attacks or not any(a != "clean" for a in cell_attacks):
        return
    images, targets = next(iter(batches))
    for attack_name, attack in cell_attacks.items():
        if attack_name not in first_batch:
            detections, adv = detection_step(model, None if attack_name == "clean" else attack)(images, targets)
            first_batch[attack_name] = (images, adv, detections)
    clean_images, _, clean_dets = first_batch.get("clean") or (images, None, model.detect(images))
    for attack_name, (_, adv, adv_dets) in first_batch.items():
        if attack_name == "clean":
            continue
        write_sample_pngs(clean_images, clean_dets, adv, adv_dets, targets, os.path.join(output_dir, "samples"),
                          f"{file_stem(model_name)}_{file_stem(attack_name)}", class_names, num_images, shown[0],
                          attack_name, top_n=shown[1])
