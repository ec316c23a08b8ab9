"""The paper's robustness table: mAP of several detectors under several attacks (spec §5, §7; Table 1).

Why a module of its own: Table 1 is a grid (models × attacks) evaluated under one *protocol*, and reproducing it
needs the protocol to be explicit data that is written next to the numbers.  Two protocols are predefined:

* ``"reference"`` — what ``eval_attack.py`` does: PGD-20 with ε = α = 8 and no random start for A_cls, A_loc,
  con, MTD (choice per batch) and CWA; DAG with 150 steps of γ = 0.5, faithful (unbounded, gradient at the clean
  image + last step); VOC07 11-point AP with the reference's coordinate offsets.
* ``"strong"`` — a stronger, corrected evaluation: PGD with a random start, α = 2 and 50 steps (ε = 8), MTD's choice
  per image, and the ε-bounded, early-stopping DAG.

Both are plain dicts (``PROTOCOLS``); ``make_protocol(name, overrides)`` deep-merges overrides such as
``{"pgd": {"steps": 5}}``.  Every (model, attack) cell is evaluated batched through
``evaluation.evaluate.evaluate_detections`` (attack and detection in one ``tf.function`` per batch; the attack sees
targets with difficult objects removed, as the reference's).

Outputs (written atomically: temporary file in the same directory, then ``os.replace``):

* ``robustness.json`` — ``{"protocol": {...}, "models": {name: {attack: mAP}}, "num_images": n,
  "per_class_AP": {name: {attack: {class: AP}}}}``, mAP and AP as fractions in [0, 1] (``null`` if undefined);
* ``robustness.md`` — a Markdown table laid out like the paper's Table 1 (rows models, columns attacks, mAP in %);
* ``pr_<model>_<attack>.png`` — per-class precision/recall curves of every cell (VOC metrics only);
* ``robustness_bars.png`` — grouped bars of mAP per model per attack;
* optionally ``samples/<model>_<attack>_<i>.png`` — clean vs attacked detections of the first images.

Figures use matplotlib's object API with the Agg canvas, never ``pyplot``, so no global backend state is touched.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from robustdet_tf.attacks.dag import dag
from robustdet_tf.attacks.pgd import pgd
from robustdet_tf.evaluation.evaluate import AttackFn, detection_step, evaluate_detections, make_metric

ATTACKS: tuple[str, ...] = ("clean", "A_cls", "A_loc", "con", "MTD", "CWA", "DAG")

# Table name → PGD objective of ``attacks.pgd`` (DAG and clean are handled separately).
PGD_METHODS: dict[str, str] = {"A_cls": "cls", "A_loc": "loc", "con": "con", "MTD": "mtd", "CWA": "cwa"}

COLUMN_TITLES: dict[str, str] = {"clean": "Clean"}

PROTOCOLS: dict[str, dict[str, Any]] = {
    "reference": {
        "name": "reference",
        "metric": "voc07",
        "reference_offsets": True,
        "seed": 0,
        "pgd": {
            "epsilon": 8.0,
            "step_size": 8.0,
            "steps": 20,
            "use_random_start": False,
            "con_weights": [1.0, 1.0],
            "mtd_per_image": False,
        },
        "dag": {"steps": 150, "gamma": 0.5, "faithful": True, "epsilon": None},
    },
    "strong": {
        "name": "strong",
        "metric": "voc07",
        "reference_offsets": True,
        "seed": 0,
        "pgd": {
            "epsilon": 8.0,
            "step_size": 2.0,
            "steps": 50,
            "use_random_start": True,
            "con_weights": [1.0, 1.0],
            "mtd_per_image": True,
        },
        "dag": {"steps": 150, "gamma": 0.5, "faithful": False, "epsilon": 8.0},
    },
}


# -- protocol -----------------------------------------------------------------------------------------------------
def _merge(base: dict[str, Any], overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if key not in base:
            raise KeyError(f"protocol override '{where}{key}' is not a protocol key; accepted keys at this level: "
                           f"{sorted(base)}.")
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise TypeError(f"protocol override '{where}{key}' must be a dict of {sorted(base[key])}, got "
                                f"{value!r}.")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def make_protocol(protocol: str | Mapping[str, Any] = "reference", overrides: Mapping[str, Any] | None = None):
    """A full protocol dict: a predefined one by name (or a complete dict) with ``overrides`` deep-merged in.

    ``overrides`` may only use existing keys (a typo fails with the list of keys), e.g.
    ``make_protocol("reference", {"pgd": {"steps": 5}, "dag": {"steps": 10}})``.
    """
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown robustness protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} or pass a "
                             "protocol dict.")
        base = copy.deepcopy(PROTOCOLS[protocol])
    else:
        base = _merge(copy.deepcopy(PROTOCOLS["reference"]), protocol, "")
    result = _merge(base, overrides or {}, "")
    if result["pgd"]["steps"] < 0 or result["dag"]["steps"] < 0:
        raise ValueError(f"protocol steps must be >= 0; got pgd.steps={result['pgd']['steps']}, "
                         f"dag.steps={result['dag']['steps']}.")
    if not result["dag"]["faithful"] and result["dag"]["epsilon"] is None:
        raise ValueError("protocol dag.faithful=False (bounded DAG) needs dag.epsilon, e.g. 8.0.")
    return result


def describe_protocol(protocol: Mapping[str, Any]) -> str:
    """One sentence describing a protocol, for the Markdown caption."""
    p, d = protocol["pgd"], protocol["dag"]
    start = "random start" if p["use_random_start"] else "no random start"
    mtd = "per image" if p["mtd_per_image"] else "per batch"
    if d["faithful"]:
        dag_text = f"DAG {d['steps']} steps, γ = {d['gamma']}, faithful (unbounded)"
    else:
        dag_text = f"DAG {d['steps']} steps, γ = {d['gamma']}, bounded ε = {d['epsilon']:g}, early stop"
    return (f"PGD-{p['steps']}, ε = {p['epsilon']:g}, α = {p['step_size']:g}, {start}; MTD choice {mtd}; "
            f"{dag_text}; metric {protocol['metric']}.")


def make_attack(name: str, protocol: Mapping[str, Any]) -> AttackFn | None:
    """The attack function ``(model, images, targets) → adversarial images`` of a table column (``None`` = clean)."""
    if name == "clean":
        return None
    if name == "DAG":
        d = protocol["dag"]
        kwargs = dict(steps=int(d["steps"]), gamma=float(d["gamma"]), faithful=bool(d["faithful"]),
                      seed=int(protocol["seed"]))
        if not d["faithful"]:
            kwargs["epsilon"] = float(d["epsilon"])
        return partial(dag, **kwargs)
    if name in PGD_METHODS:
        p = protocol["pgd"]
        return partial(
            pgd,
            method=PGD_METHODS[name],
            epsilon=float(p["epsilon"]),
            step_size=float(p["step_size"]),
            steps=int(p["steps"]),
            use_random_start=bool(p["use_random_start"]),
            seed=int(protocol["seed"]),
            con_weights=tuple(float(w) for w in p["con_weights"]),
            mtd_per_image=bool(p["mtd_per_image"]),
        )
    raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}.")


# -- atomic files -------------------------------------------------------------------------------------------------
def _atomic_write(path: str, write: Callable[[Any], None], binary: bool) -> None:
    """Write through a temporary file in the target directory, then rename: readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as handle:
            write(handle)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Atomically write a text file."""
    _atomic_write(path, lambda handle: handle.write(text), binary=False)


def save_figure_atomic(figure: Figure, path: str) -> None:
    """Atomically render a matplotlib figure to PNG with the Agg canvas."""
    FigureCanvasAgg(figure)
    _atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100), binary=True)


def _file_stem(name: str) -> str:
    """A file-name-safe version of a model or attack name (e.g. ``SSD-AT(A_cls)`` → ``SSD-AT_A_cls_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def _fraction(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# -- outputs ------------------------------------------------------------------------------------------------------
def markdown_table(results: Mapping[str, Any]) -> str:
    """Table 1 layout: one row per model, one column per attack, mAP in % with one decimal ('–' if undefined)."""
    models = results["models"]
    attacks = list(next(iter(models.values())).keys()) if models else []
    header = "| Model | " + " | ".join(COLUMN_TITLES.get(a, a) for a in attacks) + " |"
    rule = "|---|" + "---:|" * len(attacks)
    rows = []
    for model_name, cells in models.items():
        values = ["–" if cells[a] is None else f"{100.0 * cells[a]:.1f}" for a in attacks]
        rows.append(f"| {model_name} | " + " | ".join(values) + " |")
    caption = (f"mAP (%) on {results.get('num_images', '?')} images, protocol "
               f"**{results['protocol']['name']}**: {describe_protocol(results['protocol'])}")
    return "\n".join([f"# Robustness ({results['protocol']['name']} protocol)", "", caption, "", header, rule, *rows,
                      ""])


def plot_pr_curves(metric_result: Mapping[str, Any], title: str, path: str) -> None:
    """Per-class precision/recall curves of one (model, attack) cell, AP in the legend."""
    figure = Figure(figsize=(5.5, 4.5))
    axes = figure.add_subplot()
    for name, recall in metric_result["recall"].items():
        precision = metric_result["precision"][name]
        ap = metric_result["AP"][name]
        if len(recall) == 0 or math.isnan(float(ap)):
            continue
        axes.plot(recall, precision, marker="o" if len(recall) == 1 else None,
                  label=f"{name} ({100 * ap:.1f})")  # the raw cumulative curve, as metrics/PR.py plots it
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"{title}  mAP {100 * metric_result['mAP']:.1f}%" if not math.isnan(metric_result["mAP"])
                   else title)
    if axes.lines:
        axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    save_figure_atomic(figure, path)


def plot_bars(results: Mapping[str, Any], path: str) -> None:
    """Grouped bars: attacks on the x axis, one bar per model, mAP in %."""
    models = results["models"]
    attacks = list(next(iter(models.values())).keys()) if models else []
    figure = Figure(figsize=(max(5.0, 1.1 * len(attacks) + 1.5), 4.0))
    axes = figure.add_subplot()
    width = 0.8 / max(len(models), 1)
    positions = np.arange(len(attacks))
    for i, (model_name, cells) in enumerate(models.items()):
        heights = [0.0 if cells[a] is None else 100.0 * cells[a] for a in attacks]
        axes.bar(positions + (i - (len(models) - 1) / 2) * width, heights, width, label=model_name)
    axes.set_xticks(positions, [COLUMN_TITLES.get(a, a) for a in attacks])
    axes.set_ylabel("mAP (%)")
    axes.set_title(f"Robustness ({results['protocol']['name']} protocol)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def _draw_detections(axes, image: np.ndarray, detections: Mapping[str, np.ndarray],
                     ground_truth: Mapping[str, np.ndarray], class_names: Sequence[str] | None, score_threshold: float,
                     title: str) -> None:
    height, width = image.shape[:2]
    axes.imshow(np.clip(image, 0, 255).astype(np.uint8))
    axes.set_title(title, fontsize=9)
    axes.axis("off")
    for box, label in zip(ground_truth["boxes"], ground_truth["labels"], strict=True):
        if label < 0:
            continue
        x0, y0, x1, y1 = box * np.array([width, height, width, height])
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--",
                                 linewidth=1.0))
    count = int(detections["num_detections"])
    for box, score, cls in zip(detections["detection_boxes"][:count], detections["detection_scores"][:count],
                               detections["detection_classes"][:count], strict=True):
        if score < score_threshold:
            continue
        y0, x0, y1, x1 = box * np.array([height, width, height, width])
        cls = int(round(float(cls)))
        name = class_names[cls - 1] if class_names is not None and 0 < cls <= len(class_names) else str(cls)
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.2))
        axes.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=6, va="bottom",
                  bbox={"facecolor": "red", "alpha": 0.6, "pad": 1, "linewidth": 0})


def _row(batch: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in batch.items()}


def _write_sample_pngs(clean, clean_dets, adv, adv_dets, targets, output_dir: str, prefix: str,
                       class_names, num_images: int, score_threshold: float, attack_name: str) -> list[str]:
    clean, adv = np.asarray(clean), np.asarray(adv)
    clean_dets = {k: np.asarray(v) for k, v in clean_dets.items()}
    adv_dets = {k: np.asarray(v) for k, v in adv_dets.items()}
    gt = {"boxes": np.asarray(targets["boxes"]), "labels": np.asarray(targets["labels"])}
    paths = []
    for i in range(min(num_images, clean.shape[0])):
        figure = Figure(figsize=(8.0, 4.2))
        left, right = figure.subplots(1, 2)
        linf = float(np.max(np.abs(adv[i] - clean[i])))
        _draw_detections(left, clean[i], _row(clean_dets, i), _row(gt, i), class_names, score_threshold, "clean")
        _draw_detections(right, adv[i], _row(adv_dets, i), _row(gt, i), class_names, score_threshold,
                         f"{attack_name} (‖δ‖∞ = {linf:.1f})")
        figure.tight_layout()
        path = os.path.join(output_dir, f"{prefix}_{i}.png")
        save_figure_atomic(figure, path)
        paths.append(path)
    return paths


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
    return _write_sample_pngs(images, clean_dets, adv, adv_dets, targets, output_dir,
                              prefix or _file_stem(attack_name), class_names, num_images, score_threshold,
                              attack_name)


# -- the table ----------------------------------------------------------------------------------------------------
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
    attacks: Sequence[str] = ATTACKS,
    protocol: str | Mapping[str, Any] = "reference",
    overrides: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    metric_factory: Callable[[], Any] | None = None,
    plots: bool = True,
    sample_images: int = 0,
    sample_score_threshold: float = 0.3,
) -> dict[str, Any]:
    """Evaluate every model under every attack and write the table, JSON and figures to ``output_dir``.

    Args:
      models: name → detector (any model of the package: pixel input, ``detect``, ``detection_loss``).
      batches: evaluation batches ``(images, targets)`` as ``data.pipeline.eval_batches`` yields them (targets with
        ``difficult`` and ``original_size`` for the faithful VOC metric).  Iterated once per (model, attack).
      class_names: object class names (label ``k`` ↔ name ``k``).
      attacks: columns, from ``ATTACKS``.
      protocol, overrides: see ``make_protocol``.
      max_batches: evaluate only the first batches (quick looks).
      metric_factory: builds a fresh metric per cell; default ``make_metric(protocol["metric"], class_names,
        reference_offsets=protocol["reference_offsets"])`` (COCO needs a factory with its annotations).
      plots: write the PR curves and the bar plot.
      sample_images: if > 0, also draw clean vs attacked detections of that many first-batch images per cell.

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
    num_images = 0
    for model_name, model in models.items():
        table[model_name], per_class[model_name] = {}, {}
        first_batch: dict[str, tuple] = {}
        for attack_name in attacks:
            attack = make_attack(attack_name, proto)

            def keep_first(clean, adv, detections, attack_name=attack_name, first_batch=first_batch):
                first_batch.setdefault(attack_name, (clean, adv, detections))

            metric_result = evaluate_detections(model, batches, metric_factory(), attack=attack,
                                                max_batches=max_batches,
                                                on_batch=keep_first if sample_images > 0 else None)
            table[model_name][attack_name] = _fraction(_headline(metric_result))
            ap_key = "AP" if "AP" in metric_result else "per_class_AP50"
            per_class[model_name][attack_name] = {k: _fraction(v) for k, v in metric_result.get(ap_key, {}).items()}
            num_images = int(metric_result.get("num_images", num_images))
            if plots and "recall" in metric_result:
                plot_pr_curves(metric_result, f"{model_name} / {COLUMN_TITLES.get(attack_name, attack_name)}",
                               os.path.join(output_dir, f"pr_{_file_stem(model_name)}_{_file_stem(attack_name)}.png"))
        if sample_images > 0:
            _samples_for_model(model, model_name, first_batch, batches, output_dir, class_names, sample_images,
                               sample_score_threshold)

    results = {"protocol": proto, "models": table, "num_images": num_images, "per_class_AP": per_class}
    write_text_atomic(os.path.join(output_dir, "robustness.json"), json.dumps(results, indent=2) + "\n")
    write_text_atomic(os.path.join(output_dir, "robustness.md"), markdown_table(results))
    if plots:
        plot_bars(results, os.path.join(output_dir, "robustness_bars.png"))
    return results


def _samples_for_model(model, model_name, first_batch, batches, output_dir, class_names, num_images, threshold):
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
        _write_sample_pngs(clean_images, clean_dets, adv, adv_dets, targets, os.path.join(output_dir, "samples"),
                           f"{_file_stem(model_name)}_{_file_stem(attack_name)}", class_names, num_images, threshold,
                           attack_name)
