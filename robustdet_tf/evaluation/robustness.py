"""The paper's robustness table: mAP of several detectors under several attacks (spec §5, §7; Table 1).

Table 1 is a grid (models × attacks) evaluated under one *protocol* (``evaluation.protocol``: ``"reference"`` as
``eval_attack.py`` runs it, or ``"strong"``).  Every (model, attack) cell is evaluated batched through
``evaluation.evaluate.evaluate_detections`` (attack and detection in one ``tf.function`` per batch; the attack sees
targets with difficult objects removed, as the reference's).

Outputs (``evaluation.report``, each written atomically):

* ``robustness.json`` — ``{"protocol": {...}, "models": {name: {attack: mAP}}, "num_images": n,
  "per_class_AP": {name: {attack: {class: AP}}}, "worst_case": {name: {"attack": a, "mAP": m}}}``, mAP and AP as
  fractions in [0, 1] (``null`` if undefined or not applicable); ``worst_case`` is each model's lowest attacked
  cell (the ``Worst`` column, if requested, is the per-image worst case and usually lower still);
* ``robustness.md`` — a Markdown table laid out like the paper's Table 1 (rows models, columns attacks, mAP in %);
* ``pr_<model>_<attack>.png`` — per-class precision/recall curves of every cell (VOC metrics only);
* ``robustness_bars.png`` — grouped bars of mAP per model per attack;
* optionally ``samples/<model>_<attack>_<i>.png`` — clean vs attacked detections of the first images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.evaluation.evaluate import AttackFn, detection_step, evaluate_detections, make_metric
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
from robustdet_tf.evaluation.report import (  # noqa: F401  (markdown_table is re-exported)
    file_stem,
    fraction,
    markdown_table,
    plot_bars,
    plot_pr_curves,
    write_sample_pngs,
)
from robustdet_tf.evaluation.worst_case import worst_case_attack, worst_column
from robustdet_tf.io import write_text


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
def column_attack(name: str, protocol: Mapping[str, Any], columns: Sequence[str], model: keras.Model):
    """The attack of column ``name`` for ``model``; ``Worst`` combines the other attacks of ``columns`` that apply
    to the model."""
    if name != "Worst":
        return make_attack(name, protocol)
    return worst_case_attack([make_attack(c, protocol) for c in columns
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
) -> dict[str, Any]:
    """Evaluate every model under every attack and write the table, JSON and figures to ``output_dir``.

    Args:
      models: name → detector (any model of the package: pixel input, ``detect``, ``detection_loss``).
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

    Returns the dict written to ``robustness.json``.
    """
    if not models:
        raise ValueError("evaluate_robustness: no models given; pass a dict name -> model.")
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"evaluate_robustness: unknown attack(s) {unknown} (or none given); choose from {ATTACKS}.")
    proto = make_protocol(protocol, overrides)
    output_dir = os.fspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    if metric_factory is None:
        metric_factory = partial(make_metric, proto["metric"], class_names,
                                 reference_offsets=proto["reference_offsets"])

    table: dict[str, dict[str, float | None]] = {}
    per_class: dict[str, dict[str, dict[str, float | None]]] = {}
    worst: dict[str, dict[str, Any]] = {}
    num_images = 0
    for model_name, model in models.items():
        table[model_name], per_class[model_name] = {}, {}
        first_batch: dict[str, tuple] = {}
        for attack_name in attacks:
            if not column_applies(attack_name, model):  # e.g. the AID column of a model without an AID
                table[model_name][attack_name], per_class[model_name][attack_name] = None, {}
                continue
            attack = column_attack(attack_name, proto, attacks, model)

            def keep_first(clean, adv, detections, attack_name=attack_name, first_batch=first_batch):
                first_batch.setdefault(attack_name, (clean, adv, detections))

            metric_result = evaluate_detections(model, batches, metric_factory(), attack=attack,
                                                max_batches=max_batches,
                                                on_batch=keep_first if sample_images > 0 else None)
            table[model_name][attack_name] = fraction(_headline(metric_result))
            ap_key = "AP" if "AP" in metric_result else "per_class_AP50"
            per_class[model_name][attack_name] = {k: fraction(v) for k, v in metric_result.get(ap_key, {}).items()}
            num_images = int(metric_result.get("num_images", num_images))
            if plots and "recall" in metric_result:
                plot_pr_curves(metric_result, f"{model_name} / {COLUMN_TITLES.get(attack_name, attack_name)}",
                               os.path.join(output_dir, f"pr_{file_stem(model_name)}_{file_stem(attack_name)}.png"))
        worst[model_name] = worst_column(table[model_name])
        if sample_images > 0:
            _samples_for_model(model, model_name, first_batch, batches, output_dir, class_names, sample_images,
                               (sample_score_threshold, sample_top_n))

    results = {"protocol": proto, "models": table, "num_images": num_images, "per_class_AP": per_class,
               "worst_case": worst}
    write_text(os.path.join(output_dir, "robustness.json"), json.dumps(results, indent=2) + "\n")
    write_text(os.path.join(output_dir, "robustness.md"), markdown_table(results))
    if plots:
        plot_bars(results, os.path.join(output_dir, "robustness_bars.png"))
    return results


def _samples_for_model(model, model_name, first_batch, batches, output_dir, class_names, num_images, shown):
    """Reuse the first batch each attack already produced; the clean detections come from the clean column
    (or one extra batched ``detect`` if the clean column was not requested)."""
    if not first_batch:
        return
    _, targets = next(iter(batches))
    if "clean" in first_batch:
        clean_images, _, clean_dets = first_batch["clean"]
    else:
        clean_images = next(iter(first_batch.values()))[0]
        clean_dets = model.detect(clean_images)
    for attack_name, (_, adv, adv_dets) in first_batch.items():
        if attack_name == "clean":
            continue
        write_sample_pngs(clean_images, clean_dets, adv, adv_dets, targets, os.path.join(output_dir, "samples"),
                          f"{file_stem(model_name)}_{file_stem(attack_name)}", class_names, num_images, shown[0],
                          attack_name, top_n=shown[1])
