"""One line per finding, from the diagnostics' summaries: what the demo prints and ``analysis.json`` keeps.

Why apart: the sentences are the only place where numbers become claims, so they say what was measured (on how
many images, under which attack) and nothing more; a figure that did not run yields no line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustdet_tf.analysis.mechanism import finding as mechanism_finding
from robustdet_tf.evaluation.gradient_check import finding as gradient_finding


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _per_model(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {text}" for name, text in values.items())


def findings(summaries: Mapping[str, Mapping[str, Any]], settings: Mapping[str, Any]) -> list[str]:
    """The findings of every figure in ``summaries`` (figure → model → summary), one string each."""
    lines = []
    attack = settings["attack"]
    if summaries.get("entanglement"):
        ent = summaries["entanglement"]
        pairs = next(iter(ent.values()))["num_pairs"]
        lines.append(f"gradient entanglement R = g_clean·g_adv/‖g_adv‖² over all kernels (median of {pairs} "
                     f"clean/{attack} pairs): " + _per_model({n: _num(s["overall"]["median"]) for n, s in ent.items()}))
        layers = {n: _num(_mean([v for v in s["ratio"]["median"] if v is not None])) for n, s in ent.items()}
        lines.append("mean over layers of the per-layer median R: " + _per_model(layers))
        kernels = {n: "/".join(_num(_mean([s["kernel_ratio"][layer]["median"][k] for layer in s["kernel_ratio"]]), 2)
                               for k in range(len(next(iter(s["kernel_ratio"].values()))["median"])))
                   for n, s in ent.items() if s["kernel_ratio"]}
        if kernels:
            lines.append("R per AAconv kernel k (mean over layers of the median): " + _per_model(kernels))
    if summaries.get("loss_conflict"):
        lc = summaries["loss_conflict"]
        steps = settings["conflict_steps"]
        for change, words in (("adv_to_clean", f"after {steps} step(s) on {attack} images, mean loss change of clean "
                                               "images"),
                              ("clean_to_adv", f"after {steps} step(s) on clean images, mean loss change of {attack} "
                                               "images")):
            lines.append(f"{words} (fraction that rose): " + _per_model(
                {n: f"{s[change]['mean']:+.3g} ({s[change]['fraction_up']:.0%})" for n, s in lc.items()}))
    if summaries.get("attack_statistics"):
        stats = summaries["attack_statistics"]
        first = next(iter(stats.values()))
        names = list(first["confidence"])
        lines.append(f"mean confidence of detections ≥ {first['score_threshold']:g} ({' / '.join(names)}): " +
                     _per_model({n: "/".join(_num(s["confidence"][a]["mean_score"], 2) for a in names)
                                 for n, s in stats.items()}))
        for a in first["loss_change"]:
            lines.append(f"mean per-image loss change under {a} (loss_l, loss_c): " + _per_model(
                {n: f"{s['loss_change'][a]['mean_loss_l']:+.3g}, {s['loss_change'][a]['mean_loss_c']:+.3g}"
                 for n, s in stats.items()}))
    if summaries.get("step_sweep"):
        sweep = summaries["step_sweep"]
        for a in next(iter(sweep.values())):
            counts = sorted(int(c) for c in next(iter(sweep.values()))[a])
            shown = [counts[0], counts[-1]] if len(counts) > 1 else counts
            lines.append(f"mAP (%) at {' / '.join(map(str, shown))} PGD steps of {a}: " + _per_model(
                {n: " / ".join(f"{100 * s[a][c]:.1f}" for c in shown) for n, s in sweep.items()}))
    if summaries.get("gradient_check"):
        lines += gradient_finding(summaries["gradient_check"], attack)
    if summaries.get("mechanism"):
        lines += mechanism_finding(summaries["mechanism"], attack)
    return lines


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
