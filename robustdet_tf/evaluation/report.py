"""Files of a robustness evaluation: the JSON, the Table-1 Markdown, PR curves, bar plots and sample detections.

Why apart from the evaluation loop: these are pure functions of finished results (or of detections already
computed), so they can be re-rendered without re-running attacks.  Every file is written atomically through
``export.atomic.atomic_output`` (temporary file beside the destination, then a rename): a reader, or a rerun after a
crash, never sees half a file.  Figures use matplotlib's object API with the Agg canvas, never ``pyplot``, so no
global backend state is touched.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

from robustdet_tf.boxes import BOX_FORMAT, convert_format
from robustdet_tf.detections import DETECTION_BOX_FORMAT
from robustdet_tf.evaluation.protocol import COLUMN_TITLES, describe_protocol
from robustdet_tf.io import atomic_output


def save_figure_atomic(figure: Figure, path: str) -> None:
    """Atomically render a matplotlib figure to PNG with the Agg canvas."""
    FigureCanvasAgg(figure)
    with atomic_output(path, overwrite=True) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def file_stem(name: str) -> str:
    """A file-name-safe version of a model or attack name (e.g. ``SSD-AT(A_cls)`` → ``SSD-AT_A_cls_``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))


def fraction(value: Any) -> float | None:
    """A metric value as a JSON-able float, ``None`` where it is undefined (NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _percent(value: float | None, interval: Mapping[str, Any] | None = None) -> str:
    """``7.0`` or, with an interval, ``7.0 [5.1, 9.2]`` (mAP in %); '–' where undefined."""
    if value is None:
        return "–"
    text = f"{100.0 * value:.1f}"
    if interval and interval.get("ci_low") is not None:
        text += f" [{100.0 * interval['ci_low']:.1f}, {100.0 * interval['ci_high']:.1f}]"
    return text


def markdown_table(results: Mapping[str, Any]) -> str:
    """Table 1 layout: one row per model, one column per attack, mAP in % with one decimal and its bootstrap
    interval where the results have one ('–' if undefined or not applicable), the model's lowest attacked cell with
    its attack, and the paired differences between models under each attack."""
    models = results["models"]
    cells = results.get("cells", {})
    attacks = list(next(iter(models.values())).keys()) if models else []
    worst = results.get("worst_case")
    titles = [COLUMN_TITLES.get(a, a) for a in attacks] + (["Lowest (attack)"] if worst else [])
    header = "| Model | " + " | ".join(titles) + " |"
    rule = "|---|" + "---:|" * len(titles)
    rows = []
    for model_name, row in models.items():
        values = [_percent(row[a], cells.get(model_name, {}).get(a)) for a in attacks]
        if worst:
            low = worst[model_name]
            values.append("–" if low["mAP"] is None else
                          f"{_percent(low['mAP'], low)} ({COLUMN_TITLES.get(low['attack'], low['attack'])})")
        rows.append(f"| {model_name} | " + " | ".join(values) + " |")
    caption = (f"mAP (%) on {results.get('num_images', '?')} images, protocol "
               f"**{results['protocol']['name']}**: {describe_protocol(results['protocol'])}")
    if "transfer_source" in results:
        caption += f" Transfer: A_cls images made against {results['transfer_source']}."
    boot = results.get("bootstrap")
    if boot:
        caption += (f" In brackets: {100 * boot['level']:g} % {boot['method']} ({boot['resamples']} resamples, "
                    f"seed {boot['seed']}).")
    lines = [f"# Robustness ({results['protocol']['name']} protocol)", "", caption, "", header, rule, *rows, ""]
    if "corruptions" in results:
        settings = results["corruptions"]["settings"]
        rpc = "; ".join(f"{name} {_percent(r['value'], r)}" for name, r in results.get("rPC", {}).items())
        lines += [f"Corrupt (mPC): mean mAP over {len(settings['names'])} corruptions × {len(settings['severities'])} "
                  f"severities ({', '.join(settings['names'])}; severities "
                  f"{', '.join(str(s) for s in settings['severities'])}). rPC = mPC / clean, in %: {rpc}.", ""]
    differences = results.get("differences") or []
    if differences:
        lines += [f"## Paired differences (mAP points, {100 * boot['level']:g} % interval)", "",
                  "| Attack | Models | Difference | Interval |", "|---|---|---:|---:|"]
        for d in differences:
            interval = "–" if d["ci_low"] is None else f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"
            lines.append(f"| {COLUMN_TITLES.get(d['attack'], d['attack'])} | {d['model_a']} − {d['model_b']} | "
                         f"{100 * d['difference']:+.1f} | {interval} |")
        lines.append("")
    return "\n".join(lines)


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


def _half_width(value: float | None, bound: float | None, side: str) -> float:
    """The length in mAP % of one side of an error bar (0 where the cell or its interval is missing)."""
    if value is None or bound is None:
        return 0.0
    return max(0.0, 100.0 * (value - bound if side == "ci_low" else bound - value))


def plot_bars(results: Mapping[str, Any], path: str) -> None:
    """Grouped bars: attacks on the x axis, one bar per model, mAP in %, with the bootstrap interval of each cell
    as an error bar where the results have intervals."""
    models = results["models"]
    attacks = list(next(iter(models.values())).keys()) if models else []
    figure = Figure(figsize=(max(5.0, 1.1 * len(attacks) + 1.5), 4.0))
    axes = figure.add_subplot()
    width = 0.8 / max(len(models), 1)
    positions = np.arange(len(attacks))
    intervals = results.get("cells", {})
    for i, (model_name, cells) in enumerate(models.items()):
        heights = [0.0 if cells[a] is None else 100.0 * cells[a] for a in attacks]
        errors = None
        if intervals:
            spans = [intervals.get(model_name, {}).get(a) or {} for a in attacks]
            errors = np.array([[_half_width(cells[a], s.get(side), side) for a, s in zip(attacks, spans, strict=True)]
                               for side in ("ci_low", "ci_high")])
        axes.bar(positions + (i - (len(models) - 1) / 2) * width, heights, width, label=model_name, yerr=errors,
                 capsize=2, error_kw={"elinewidth": 0.8})
    axes.set_xticks(positions, [COLUMN_TITLES.get(a, a) for a in attacks])
    axes.set_ylabel("mAP (%)")
    axes.set_title(f"Robustness ({results['protocol']['name']} protocol)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def detections_to_draw(scores: np.ndarray, count: int, score_threshold: float, top_n: int) -> list[int]:
    """Indices of the detections a picture shows: the ``top_n`` best of the first ``count`` scoring at least
    ``score_threshold``, best first."""
    scores = np.asarray(scores)[:count]
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order if scores[i] >= score_threshold][: max(0, int(top_n))]


def _draw_detections(axes, image: np.ndarray, detections: Mapping[str, np.ndarray],
                     ground_truth: Mapping[str, np.ndarray], class_names: Sequence[str] | None, score_threshold: float,
                     title: str, top_n: int) -> None:
    height, width = image.shape[:2]
    axes.imshow(np.clip(image, 0, 255).astype(np.uint8))
    axes.set_title(title, fontsize=9)
    axes.axis("off")
    for box, label in zip(ground_truth["boxes"], ground_truth["labels"], strict=True):
        if label < 0:
            continue
        x0, y0, x1, y1 = convert_format(np.asarray(box, np.float64), BOX_FORMAT, "xyxy", height, width)
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--",
                                 linewidth=1.0))
    shown = detections_to_draw(detections["detection_scores"], int(detections["num_detections"]), score_threshold,
                               top_n)
    for box, score, cls in zip(detections["detection_boxes"][shown], detections["detection_scores"][shown],
                               detections["detection_classes"][shown], strict=True):
        x0, y0, x1, y1 = convert_format(np.asarray(box, np.float64), DETECTION_BOX_FORMAT, "xyxy", height, width)
        cls = int(round(float(cls)))
        name = class_names[cls - 1] if class_names is not None and 0 < cls <= len(class_names) else str(cls)
        axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.2))
        axes.text(x0, y0, f"{name} {score:.2f}", color="white", fontsize=6, va="bottom",
                  bbox={"facecolor": "red", "alpha": 0.6, "pad": 1, "linewidth": 0})


def _row(batch: Mapping[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in batch.items()}


def write_sample_pngs(clean, clean_dets, adv, adv_dets, targets, output_dir: str, prefix: str,
                      class_names, num_images: int, score_threshold: float, attack_name: str,
                      top_n: int = 10) -> list[str]:
    """One PNG per image, ``<output_dir>/<prefix>_<i>.png``: clean detections left, attacked right (red), the ground
    truth dashed white on both, the perturbation's L∞ norm in the title; at most ``top_n`` detections scoring at
    least ``score_threshold`` are drawn, so the picture stays readable.  Returns the paths written."""
    clean, adv = np.asarray(clean), np.asarray(adv)
    clean_dets = {k: np.asarray(v) for k, v in clean_dets.items()}
    adv_dets = {k: np.asarray(v) for k, v in adv_dets.items()}
    gt = {"boxes": np.asarray(targets["boxes"]), "labels": np.asarray(targets["labels"])}
    paths = []
    for i in range(min(num_images, clean.shape[0])):
        figure = Figure(figsize=(8.0, 4.2))
        left, right = figure.subplots(1, 2)
        linf = float(np.max(np.abs(adv[i] - clean[i])))
        _draw_detections(left, clean[i], _row(clean_dets, i), _row(gt, i), class_names, score_threshold, "clean",
                         top_n)
        _draw_detections(right, adv[i], _row(adv_dets, i), _row(gt, i), class_names, score_threshold,
                         f"{attack_name} (‖δ‖∞ = {linf:.1f})", top_n)
        figure.tight_layout()
        path = os.path.join(output_dir, f"{prefix}_{i}.png")
        save_figure_atomic(figure, path)
        paths.append(path)
    return paths


def write_patch_png(patch, path: str) -> None:
    """A fitted universal patch as the PNG one would print (its exact pixels, rounded to 8 bits)."""
    pixels = np.clip(np.rint(np.asarray(patch, np.float32)), 0, 255).astype(np.uint8)
    with atomic_output(path, overwrite=True) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")
