"""Figures of the diagnostics, as pure functions of their finished results (numpy arrays and summaries).

Why apart from the computations: a figure can be re-drawn from the JSON without re-running gradients or attacks.
Like ``evaluation.report``, figures use matplotlib's object API with the Agg canvas (never ``pyplot``: no global
backend state) and are written atomically with ``evaluation.report.save_figure_atomic``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from robustdet_tf.evaluation.report import save_figure_atomic


def _histograms(axes, series: Mapping[str, np.ndarray], bins: int = 30, zero_line: bool = False) -> None:
    """Overlaid step histograms on shared bins, one per named series (empty series are listed as such)."""
    finite = [np.asarray(v, np.float64)[np.isfinite(v)] for v in series.values()]
    pooled = np.concatenate([v for v in finite if v.size] or [np.zeros(1)])
    low, high = float(pooled.min()), float(pooled.max())
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    for (name, _), values in zip(series.items(), finite):
        label = f"{name} (n={values.size}, mean {values.mean():.3g})" if values.size else f"{name} (none)"
        axes.hist(values, bins=edges, histtype="step", linewidth=1.4, label=label)
    if zero_line:
        axes.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    axes.legend(fontsize=7)


def plot_loss_conflict(results: Mapping[str, Mapping[str, np.ndarray]], path: str, steps: int) -> None:
    """Fig. 3: one row per model; left trained on clean, right trained on adversarial images; in each panel the
    per-image loss changes measured on clean and on adversarial images."""
    figure = Figure(figsize=(10.0, 3.2 * max(len(results), 1)))
    grid = figure.subplots(max(len(results), 1), 2, squeeze=False)
    for row, (model_name, result) in zip(grid, results.items()):
        for axes, trained in zip(row, ("clean", "adv")):
            _histograms(axes, {"measured on clean": result[f"{trained}_to_clean"],
                               "measured on adv": result[f"{trained}_to_adv"]}, zero_line=True)
            axes.set_title(f"{model_name}: {steps} step(s) on {'clean' if trained == 'clean' else 'adversarial'} "
                           "images", fontsize=9)
            axes.set_xlabel("loss after − loss before (per image)")
            axes.set_ylabel("images")
    figure.tight_layout()
    save_figure_atomic(figure, path)


def plot_entanglement(summaries: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """Fig. 4: median R per convolution layer for each model (left) and, for models with AAconv layers, per kernel
    (right; one line per kernel k)."""
    multi = {name: s for name, s in summaries.items() if s["kernel_ratio"]}
    figure = Figure(figsize=(12.0 if multi else 7.0, 4.2))
    panels = figure.subplots(1, 2 if multi else 1, squeeze=False)[0]
    layers: Sequence[str] = next(iter(summaries.values()))["layers"] if summaries else []
    for name, summary in summaries.items():
        values = [np.nan if v is None else v for v in summary["ratio"]["median"]]
        overall = summary["overall"]["median"]
        panels[0].plot(np.arange(len(values)), values, marker=".",
                       label=f"{name} (overall {overall:.2f})" if overall is not None else name)
    panels[0].axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    panels[0].set_title("gradient entanglement R = g_clean·g_adv / ‖g_adv‖² (median over pairs)", fontsize=9)
    for name, summary in multi.items():
        names = list(summary["kernel_ratio"])
        per_kernel = np.array([[np.nan if v is None else v for v in summary["kernel_ratio"][n]["median"]]
                               for n in names])
        positions = [list(layers).index(n) for n in names]
        for k in range(per_kernel.shape[1]):
            panels[1].plot(positions, per_kernel[:, k], marker=".", label=f"{name} kernel {k}")
        panels[1].set_yscale("symlog", linthresh=1.0)  # R_k = (π_clean,k / π_adv,k)·R: spans decades
        panels[1].set_title("R per AAconv kernel (median over pairs; symlog)", fontsize=9)
        panels[1].axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
    for axes in panels:
        axes.set_xticks(np.arange(len(layers)), list(layers), rotation=90, fontsize=6)
        axes.set_ylabel("R")
        if axes.lines:
            axes.legend(fontsize=7)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def plot_step_sweep(sweeps: Mapping[str, Mapping[str, Mapping[int, float]]], path: str) -> None:
    """Fig. 7a/b: mAP (%) against PGD steps, one panel per attack, one line per model."""
    attacks = list(next(iter(sweeps.values()))) if sweeps else []
    figure = Figure(figsize=(5.0 * max(len(attacks), 1), 4.0))
    panels = figure.subplots(1, max(len(attacks), 1), squeeze=False)[0]
    for axes, attack in zip(panels, attacks):
        for model_name, per_attack in sweeps.items():
            steps = sorted(int(s) for s in per_attack[attack])
            axes.plot(steps, [100.0 * per_attack[attack][s] for s in steps], marker="o", label=model_name)
        axes.set_title(f"mAP under {attack}", fontsize=10)
        axes.set_xlabel("PGD steps")
        axes.set_ylabel("mAP (%)")
        axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure_atomic(figure, path)


def plot_confidence(stats: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """Fig. 7c: histograms of the scores of detections above the threshold, one panel per model, one line per
    attack (clean included)."""
    figure = Figure(figsize=(5.0 * max(len(stats), 1), 3.8))
    panels = figure.subplots(1, max(len(stats), 1), squeeze=False)[0]
    for axes, (model_name, stat) in zip(panels, stats.items()):
        _histograms(axes, stat["scores"], bins=20)
        axes.set_title(f"{model_name}: detection scores ≥ {stat['score_threshold']:g}", fontsize=9)
        axes.set_xlabel("confidence")
        axes.set_ylabel("detections")
    figure.tight_layout()
    save_figure_atomic(figure, path)


def plot_loss_changes(stats: Mapping[str, Mapping[str, Any]], path: str) -> None:
    """Fig. 5: per-image loss change (attacked − clean) per attack: rows attacks, columns loss_l and loss_c, one
    line per model."""
    attacks = list(next(iter(stats.values()))["loss_change"]) if stats else []
    figure = Figure(figsize=(10.0, 3.2 * max(len(attacks), 1)))
    grid = figure.subplots(max(len(attacks), 1), 2, squeeze=False)
    for row, attack in zip(grid, attacks):
        for column, (axes, term) in enumerate(zip(row, ("loss_l", "loss_c"))):
            _histograms(axes, {name: s["loss_change"][attack][:, column] for name, s in stats.items()},
                        zero_line=True)
            axes.set_title(f"{attack}: change of {term} (attacked − clean)", fontsize=9)
            axes.set_xlabel(f"Δ {term} per image")
            axes.set_ylabel("images")
    figure.tight_layout()
    save_figure_atomic(figure, path)


def plot_mechanism(results: Mapping[str, Mapping[str, Any]], path: str, attack: str) -> None:
    """One panel per model with an AID: the histograms of the separation score (``mechanism.SCORE``) of the clean
    images and of their ``attack`` versions, titled with the AUC, the π shift and the kernel spread."""
    rows = {name: r for name, r in results.items() if r.get("has_aid")}
    figure = Figure(figsize=(5.0 * max(len(rows), 1), 3.4))
    axes = figure.subplots(1, max(len(rows), 1), squeeze=False)[0]
    for ax, (name, r) in zip(axes, rows.items()):
        _histograms(ax, {"clean": r["per_image"]["score_clean"], attack: r["per_image"]["score_adv"]})
        ax.set_title(f"{name}: AUC {r['aid_auc']:.2f}, π shift {r['pi_shift']:.3g}, spread {r['kernel_spread']:.3g}",
                     fontsize=9)
        ax.set_xlabel("JS(π ‖ mean clean π), nats")
        ax.set_ylabel("images")
    figure.tight_layout()
    save_figure_atomic(figure, path)
