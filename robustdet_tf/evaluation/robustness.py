"""The paper's robustness table: mAP of several detectors under several attacks
(docs/reference.md#evaluation-protocol; Table 1).

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
  ``"bootstrap"`` (its settings): paired percentile bootstrap over images (``metrics.bootstrap``);
* ``robustness.md`` — a Markdown table laid out like the paper's Table 1 (rows models, columns attacks, mAP in %,
  intervals in brackets), then the paired differences;
* ``pr_<model>_<attack>.png`` — per-class precision/recall curves of every cell (VOC metrics only);
* ``robustness_bars.png`` — grouped bars of mAP per model per attack, intervals as error bars;
* optionally ``samples/<model>_<attack>_<i>.png`` — clean vs attacked detections of the first images.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.attacks.patch import PatchSpec, fit_universal_patch, patch_attack
from robustdet_tf.evaluation import corruptions, shard_plan, sharded
from robustdet_tf.evaluation.evaluate import AttackFn, make_metric
from robustdet_tf.evaluation.gradient_check import table_gradient_checks
from robustdet_tf.evaluation.progress import TableProgress
from robustdet_tf.evaluation.protocol import (  # noqa: F401  (re-exported: the table's public vocabulary)
    ATTACKS,
    COLUMN_TITLES,
    PAPER_ATTACKS,
    PGD_METHODS,
    PROTOCOLS,
    UNATTACKED,
    attack_spec,
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
    write_patch_png,
)
from robustdet_tf.evaluation.samples import samples_for_model
from robustdet_tf.evaluation.table_spec import TableRun, TableSpec
from robustdet_tf.evaluation.transfer import TRANSFER_BASE, same_cell, transfer_attack
from robustdet_tf.evaluation.worst_case import worst_case_attack, worst_column
from robustdet_tf.io import atomic_output, workdir_lock, write_text
from robustdet_tf.metrics.bootstrap import table_intervals, with_intervals


# -- the table ----------------------------------------------------------------------------------------------------
def column_attack(name: str, protocol: Mapping[str, Any], columns: Sequence[str], model: keras.Model,
                  source: keras.Model | None = None, patch: AttackFn | None = None):
    """The attack of column ``name`` for ``model``; ``Worst`` combines the other attacks of ``columns`` that apply
    to the model; ``Transfer`` is A_cls made against ``source`` (the table's transfer source); a ``Corrupt`` cell
    attacks nothing (its images are corrupted before the step); ``Patch`` is ``patch``, the attack of the patch
    fitted for this model."""
    if corruptions.is_sub_column(name):
        return None
    if name == "Patch":
        if patch is None:
            raise ValueError("the 'Patch' column needs the model's fitted patch (evaluate_robustness fits it).")
        return patch
    if name == "Transfer":
        if source is None:
            raise ValueError("the 'Transfer' column needs a source model (eval.transfer_source).")
        return transfer_attack(source, make_attack(TRANSFER_BASE, protocol))
    if name != "Worst":
        return make_attack(name, protocol)
    return worst_case_attack([column_attack(c, protocol, columns, model, source, patch) for c in columns
                              if c not in (*UNATTACKED, "Worst") and column_applies(c, model)])


def _headline(metric_result: Mapping[str, Any]) -> float:
    """The table's number: ``mAP`` (VOC) or ``AP50`` (COCO, what the paper reports)."""
    for key in ("mAP", "AP50"):
        if key in metric_result:
            return float(metric_result[key])
    raise KeyError(f"the metric result has neither 'mAP' nor 'AP50' (keys {sorted(metric_result)}).")


DEFAULT_TABLE = TableSpec()
"""Table 1's columns under the reference protocol, one shard, intervals from 1000 resamples."""
ONE_PROCESS = TableRun()
"""One device, the workers of ``TF_CONFIG`` (one outside a cluster), silent."""


def evaluate_robustness(
    models: Mapping[str, keras.Model],
    batches: tf.data.Dataset,
    class_names: Sequence[str],
    output_dir: str | os.PathLike,
    spec: TableSpec = DEFAULT_TABLE,
    run: TableRun = ONE_PROCESS,
) -> dict[str, Any] | None:
    """Evaluate every model under every attack of ``spec`` and write the table, JSON and figures to ``output_dir``.

    Plan (check the spec against the models, resolve the protocol, match a resumed folder's plan) → compute the cells
    (``_compute_cells``) → collect and write them (``_collect``, ``_write``).  Every cell goes through the shard
    engine (``evaluation.sharded``): its batches are cut into shards of ``spec.shard_batches`` consecutive batches
    whose metric states are saved under ``output_dir/shards`` and merged in order, which gives the one-pass metric
    bit for bit.  A rerun into the same folder after an interruption reuses the finished shards; under ``TF_CONFIG``
    each worker computes its own shards and only the chief writes the table (after waiting for the others' shards).
    The shard files are removed once the table is written.

    Args:
      models: name → detector (any model of the package: pixel input, ``detect``, ``detection_loss``); under a
        strategy with several replicas, built or loaded under its scope.
      batches: evaluation batches ``(images, targets)`` as ``data.pipeline.eval_batches`` yields them (targets with
        ``difficult`` and ``original_size`` for the reference's VOC metric).  Iterated once per (model, attack).
      class_names: object class names (label ``k`` ↔ name ``k``).
      spec: the table (``TableSpec``: columns, protocol, samples, shards, intervals, transfer source), recorded in
        ``robustness.json`` as ``table_spec``.
      run: how this process computes it (``TableRun``: replicas, workers, printer, metric factory, data identity).

    Returns the dict written to ``robustness.json``, or ``None`` on a worker that is not the chief.
    """
    table = _plan(models, batches, class_names, output_dir, spec, run)
    # One evaluation per output folder (per worker of a TF_CONFIG cluster, which share it by design): a second run
    # into the folder is refused, naming the holder, so a finishing run never removes shards another is reading.
    with workdir_lock(table.output_dir, name=f".lock-worker{table.workers.index}", what="--output_dir"):
        plan_data = {"class_names": list(class_names), "max_batches": spec.max_batches, **(run.data or {})}
        if table.source_name is not None:
            plan_data["transfer_source"] = table.source_name
        shard_plan.check_plan(table.output_dir, shard_plan.make_plan(
            models, spec.attacks, table.protocol, spec.shard_batches, table.metric_factory(), plan_data))
        first_batch = _compute_cells(table)
        if not table.workers.chief:
            return None
        results = _collect(table, first_batch)
        if spec.gradient_check_images:
            results["gradient_check"] = table_gradient_checks(table.models, table.batches, table.protocol,
                                                              spec.gradient_check_images)
        _write(table, results)
        return results


@dataclasses.dataclass
class _Table:
    """One table being computed: what the plan resolved, read by every later stage."""

    models: Mapping[str, keras.Model]
    batches: tf.data.Dataset
    class_names: Sequence[str]
    output_dir: str
    spec: TableSpec
    run: TableRun
    protocol: dict[str, Any]
    metric_factory: Callable[[], Any]
    workers: sharded.Workers
    source_name: str | None  # the transfer source, when the table has a Transfer column
    cells: list[tuple[str, str]]  # every (model, attack) that applies; the Corrupt column as its pairs' cells
    corruption_columns: list[str]  # the Corrupt column's cells, Corrupt:<name>:<severity>
    patches: dict[str, Any] = dataclasses.field(default_factory=dict)  # model name -> fitted patch [side, side, 3]

    @property
    def source(self) -> keras.Model | None:
        return None if self.source_name is None else self.models[self.source_name]

    def stored(self, model_name: str, attack_name: str) -> str:
        """The column whose cell files hold this cell (the source's Transfer cell is its A_cls cell)."""
        return same_cell(model_name, attack_name, self.source_name, self.spec.attacks) or attack_name

    def attack(self, attack_name: str, model: keras.Model):
        patch = None
        if attack_name in ("Patch", "Worst") and "Patch" in self.spec.attacks:
            name = next(n for n, m in self.models.items() if m is model)
            patch = patch_attack(self.patch(name), PatchSpec.from_dict(self.protocol["patch"]))
        return column_attack(attack_name, self.protocol, self.spec.attacks, model, self.source, patch)

    def patch(self, model_name: str) -> tf.Tensor:
        """The universal patch of ``model_name``, fitted once on the training batches (``TableRun.patch_batches``)
        and kept in ``shards/patches/`` so a resumed or sharded table pastes the very same pixels."""
        if model_name not in self.patches:
            path = os.path.join(sharded.shards_root(self.output_dir), "patches", f"{file_stem(model_name)}.npy")
            if os.path.exists(path):
                self.patches[model_name] = tf.constant(np.load(path))
            else:
                fitted = fit_universal_patch(self.models[model_name], self.run.patch_batches,
                                             PatchSpec.from_dict(self.protocol["patch"]))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with atomic_output(path, overwrite=True) as temporary:
                    with open(temporary, "wb") as handle:
                        np.save(handle, fitted.numpy())
                self.patches[model_name] = fitted
        return self.patches[model_name]


def _plan(models, batches, class_names, output_dir, spec: TableSpec, run: TableRun) -> _Table:
    """Check the spec against the models and resolve what the stages read; nothing is computed or written."""
    if not models:
        raise ValueError("evaluate_robustness: no models given; pass a dict name -> model.")
    stems = {}
    for name in models:
        stems.setdefault(file_stem(name), []).append(name)
    clash = [names for names in stems.values() if len(names) > 1]
    if clash:
        raise ValueError(f"evaluate_robustness: the model names {clash[0]} give the same file name; rename one.")
    source_name = None
    if "Transfer" in spec.attacks:
        source_name = spec.transfer_source or next(iter(models))
        if source_name not in models:
            raise ValueError(f"evaluate_robustness: the transfer source {source_name!r} is not one of the models "
                             f"{list(models)}; set eval.transfer_source to one of them.")
    protocol = spec.resolved_protocol()
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    metric_factory = run.metric_factory or partial(make_metric, protocol["metric"], class_names,
                                                   offsets=protocol["voc_offsets"])
    if "Patch" in spec.attacks and run.patch_batches is None:
        raise ValueError("evaluate_robustness: the 'Patch' column fits a patch per model on training images; pass "
                         "them as TableRun(patch_batches=...) (--mode=evaluate reads the config's training set).")
    if spec.max_batches is not None:
        batches = batches.take(spec.max_batches)
    corruption_columns = (corruptions.sub_columns(protocol["corruptions"]) if corruptions.COLUMN in spec.attacks
                          else [])
    columns = [c for a in spec.attacks for c in (corruption_columns if a == corruptions.COLUMN else [a])]
    cells = [(m, a) for m in models for a in columns if column_applies(a, models[m])]
    return _Table(models, batches, class_names, output_dir, spec, run, protocol, metric_factory,
                  run.workers or sharded.Workers.from_environment(), source_name, cells, corruption_columns)


def _compute_cells(table: _Table) -> dict[str, dict[str, tuple]]:
    """Compute (or reuse) this worker's shards of every cell; returns each model's first batch per attack (the
    sample pictures reuse them)."""
    spec, run, workers = table.spec, table.run, table.workers
    first_batch: dict[str, dict[str, tuple]] = {name: {} for name in table.models}
    computed_cells = [(m, a) for m, a in table.cells if table.stored(m, a) == a]
    # Every model's cell of one corruption pair before the next pair: the pair's corrupted images are made once
    # and removed after its last cell.
    by_pair = sorted((c for c in computed_cells if corruptions.is_sub_column(c[1])),
                     key=lambda cell: table.corruption_columns.index(cell[1]))
    computed_cells = [c for c in computed_cells if not corruptions.is_sub_column(c[1])] + by_pair
    last_of_pair = {attack: (model, attack) for model, attack in by_pair}
    known = (run.data or {}).get("num_examples") if spec.max_batches is None and workers.count == 1 else None
    progress = TableProgress(computed_cells, known, run.printer) if run.printer is not None else None
    computed = reused = 0
    unattacked_steps: dict[str, Any] = {}  # one traced step per model for the cells that attack nothing
    for model_name, attack_name in computed_cells:
        model = table.models[model_name]
        attack = table.attack(attack_name, model)
        if attack is None:
            if model_name not in unattacked_steps:
                unattacked_steps[model_name] = batch_step(model, None, run.strategy)
            step = unattacked_steps[model_name]
        else:
            step = batch_step(model, attack, run.strategy)
        corrupted = corruptions.is_sub_column(attack_name)
        keep = spec.sample_images > 0 and workers.chief and not corrupted
        pair_files = (corruptions.cache_dir(sharded.shards_root(table.output_dir), attack_name) if corrupted
                      else None)

        def on_batch(index, clean, adv, detections, kept=first_batch[model_name], attack_name=attack_name,
                     keep=keep):
            if keep and index == 0:
                kept[attack_name] = (clean, adv, detections)
            if progress is not None:
                progress.batch_done(int(clean.shape[0]))

        if progress is not None:
            progress.start_cell(model_name, attack_name)
        prepare = (corruptions.corrupter(attack_name, table.protocol["corruptions"]["seed"], pair_files)
                   if corrupted else None)
        done = sharded.compute_shards(sharded.cell_dir(table.output_dir, model_name, attack_name), table.batches,
                                      step, table.metric_factory, spec.shard_batches, workers, on_batch=on_batch,
                                      prepare=prepare)
        if corrupted and last_of_pair[attack_name] == (model_name, attack_name):
            shutil.rmtree(pair_files, ignore_errors=True)
        if progress is not None:
            progress.end_cell(reused=done[0] == 0 and done[1] > 0)
        computed, reused = computed + done[0], reused + done[1]
    if run.printer is not None and (reused or workers.count > 1):  # a fresh one-process run says nothing extra
        run.printer(f"worker {workers.index} of {workers.count}: computed {computed} shards, reused {reused} finished "
                    f"shards ({len(table.cells)} cells)")
    return first_batch


def _collect(table: _Table, first_batch: dict[str, dict[str, tuple]]) -> dict[str, Any]:
    """Merge every cell's shards into the table (mAP, per-class AP, intervals); draws the PR curves and samples."""
    spec, models = table.spec, table.models
    values: dict[str, dict[str, float | None]] = {name: {} for name in models}
    per_class: dict[str, dict[str, dict[str, float | None]]] = {name: {} for name in models}
    pairs: dict[str, dict[str, float | None]] = {name: {} for name in models}  # the Corrupt column's cells
    pair_classes: dict[str, list[dict[str, float | None]]] = {name: [] for name in models}
    num_images = 0
    matches = {}
    for model_name, model in models.items():
        for attack_name in _expanded(spec.attacks, table.corruption_columns):
            if attack_name == corruptions.COLUMN:
                values[model_name][attack_name] = corruptions.summarise(pairs[model_name], table.corruption_columns)
                per_class[model_name][attack_name] = _mean_per_class(pair_classes[model_name])
                continue
            if (model_name, attack_name) not in table.cells:  # e.g. the AID column of a model without an AID
                values[model_name][attack_name], per_class[model_name][attack_name] = None, {}
                continue
            stored = table.stored(model_name, attack_name)
            metric = sharded.merged_metric(sharded.cell_dir(table.output_dir, model_name, stored),
                                           table.metric_factory, spec.shard_batches, table.workers,
                                           spec.shard_timeout, what=f"the cell ({model_name}, {stored})")
            metric_result = metric.result()
            if spec.bootstrap.resamples:
                matches[(model_name, attack_name)] = metric.ranked_matches()
            ap_key = "AP" if "AP" in metric_result else "per_class_AP50"
            class_ap = {k: fraction(v) for k, v in metric_result.get(ap_key, {}).items()}
            num_images = int(metric_result.get("num_images", num_images))
            if corruptions.is_sub_column(attack_name):
                pairs[model_name][attack_name] = fraction(_headline(metric_result))
                pair_classes[model_name].append(class_ap)
                continue
            values[model_name][attack_name] = fraction(_headline(metric_result))
            per_class[model_name][attack_name] = class_ap
            if spec.plots and "recall" in metric_result:
                plot_pr_curves(metric_result, f"{model_name} / {COLUMN_TITLES.get(attack_name, attack_name)}",
                               os.path.join(table.output_dir,
                                            f"pr_{file_stem(model_name)}_{file_stem(attack_name)}.png"))
        if spec.sample_images > 0:
            applicable = [a for a in spec.attacks if (model_name, a) in table.cells]
            kept = first_batch[model_name]
            for attack_name in applicable:
                if table.stored(model_name, attack_name) in kept:
                    kept.setdefault(attack_name, kept[table.stored(model_name, attack_name)])
            samples_for_model(model, model_name, kept, table.batches, table.output_dir, table.class_names,
                               spec.sample_images, (spec.sample_score_threshold, spec.sample_top_n),
                               {a: table.attack(a, model) for a in applicable})
    worst = {name: worst_column(values[name]) for name in models}
    results = {"protocol": table.protocol, "models": values, "num_images": num_images, "per_class_AP": per_class,
               "worst_case": worst, "table_spec": spec.to_dict()}
    if table.source_name is not None:
        results["transfer_source"] = table.source_name
    intervals = None
    if spec.bootstrap.resamples:
        composite = {corruptions.COLUMN: table.corruption_columns} if table.corruption_columns else {}
        ratio = {"rPC": (corruptions.COLUMN, "clean")} if composite and "clean" in spec.attacks else {}
        intervals = table_intervals(matches, list(models), list(spec.attacks), spec.bootstrap, composite,
                                    UNATTACKED, ratio)
        results.update(with_intervals(values, worst, intervals, spec.bootstrap, num_images))
    if "Patch" in spec.attacks:
        patch_spec = PatchSpec.from_dict(table.protocol["patch"])
        results["patches"] = {name: {"file": f"patch_{file_stem(name)}.png", "side": int(table.patch(name).shape[0]),
                                     "spec": patch_spec.to_dict()} for name in models}
    if table.corruption_columns:
        results.update(corruptions.results_entries(pairs, values, intervals, table.protocol["corruptions"]))
    return results


def _expanded(attacks: Sequence[str], corruption_columns: Sequence[str]) -> list[str]:
    """The table's columns with the Corrupt column's cells just before it (its value is their mean)."""
    return [c for a in attacks for c in ([*corruption_columns, a] if a == corruptions.COLUMN else [a])]


def _mean_per_class(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per-class AP averaged over the Corrupt column's cells (``None`` where a cell has no value)."""
    if not rows:
        return {}
    return {name: (None if any(r.get(name) is None for r in rows) else sum(r[name] for r in rows) / len(rows))
            for name in rows[0]}


def _write(table: _Table, results: dict[str, Any]) -> None:
    """``robustness.md`` and the bar plot, then ``robustness.json``, then the shards go.  The JSON is the mark of a
    finished table (``sharded.is_unfinished``), so it comes after the other files: a run killed before it leaves a
    table that the same command resumes from its shards and finishes in place."""
    write_text(os.path.join(table.output_dir, "robustness.md"), markdown_table(results))
    for name, entry in results.get("patches", {}).items():
        write_patch_png(table.patch(name), os.path.join(table.output_dir, entry["file"]))
    if table.spec.plots:
        plot_bars(results, os.path.join(table.output_dir, "robustness_bars.png"))
    write_text(os.path.join(table.output_dir, "robustness.json"), json.dumps(results, indent=2) + "\n")
    shutil.rmtree(sharded.shards_root(table.output_dir), ignore_errors=True)
