"""Is RobustDet's mechanism running?  The AID's separation of attacked from clean images, kernel spread, π shift.

Why: the paper's claim rests on a chain: the AID gives attacked images another kernel mixture π than clean ones, the
K kernels of every AAconv become different, so an attacked image is convolved with other kernels than a clean one.
When the robustness table shows RobustDet no better than SSD-AT, these three numbers say where the chain breaks.

* ``aid_auc``: the ROC AUC of telling an image's attacked version from the clean images by the score
  s(x) = JS(π(x) ‖ π̄_clean), the Jensen–Shannon divergence (nats) of the image's mixture from the mean mixture of
  the clean images.  The score needs no labels and no direction: an AID that maps attacked images anywhere away
  from where it maps clean ones scores high.  0.5 = no separation, 1 = every attacked image lies farther from the
  clean mean than every clean image.  Ties count one half (Mann–Whitney).
* ``pi_shift``: the mean over images of JS(π(x) ‖ π(x_adv)), image by image (0 … ln 2).
* ``kernel_spread``: per AAconv layer, mean_k ‖W_k − W̄‖ / ‖W̄‖ over the K kernels W_k (bias left out), W̄ their
  mean; 0 for K identical kernels (RobustDet expanded from an SSD starts there).  Summarised as the mean over
  layers, with the per-layer values kept.

Intervals: a paired percentile bootstrap over images (an image's clean and attacked π are drawn together), with
the table's ``eval.bootstrap`` settings; the clean mean π̄ is recomputed in each resample, so each resample's AUC is
the AUC recomputed on the resampled images (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from robustdet_tf.attacks.model_protocol import has_aid
from robustdet_tf.compiled import traced_once
from robustdet_tf.layers.aaconv import AAConv2D
from robustdet_tf.metrics.bootstrap import BootstrapSpec, percentile_interval, resample_weights

SCORE = "JS(pi(x) || mean clean pi), nats"
"""The separation score, as ``analysis.json`` and the bench's JSON lines name it."""

_EPS = 1e-12
_PAIRS_AT_ONCE = 2_000_000  # resamples × N × N comparisons held at once by the weighted AUC


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen–Shannon divergence (nats) of mixtures ``p`` and ``q`` (``[..., K]``, broadcast)."""
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    m = 0.5 * (p + q)

    def kl(a):
        return np.sum(a * (np.log(a + _EPS) - np.log(m + _EPS)), axis=-1)

    return np.maximum(0.5 * kl(p) + 0.5 * kl(q), 0.0)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive > negative) + ½ P(tie): the ROC AUC of scores where ``positive`` should be larger."""
    return float(weighted_auc(np.asarray(positive)[None], np.asarray(negative)[None],
                              np.ones((1, len(positive))), np.ones((1, len(negative))))[0])


def weighted_auc(positive: np.ndarray, negative: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """``[R]`` AUCs of rows of scores ``[R, N]`` / ``[R, M]`` where each score counts its weight (``[R, N]``,
    ``[R, M]``): an image drawn w times in a resample counts w times."""
    greater = (positive[:, :, None] > negative[:, None, :]).astype(np.float64)
    ties = (positive[:, :, None] == negative[:, None, :]).astype(np.float64)
    pairs = w_pos[:, :, None] * w_neg[:, None, :]
    total = pairs.sum(axis=(1, 2))
    return np.einsum("rij,rij->r", pairs, greater + 0.5 * ties) / np.maximum(total, _EPS)


def separation(pi_clean: np.ndarray, pi_adv: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``[R]`` AUCs of the score ``SCORE`` for each row of image weights ``[R, N]`` (``None``: one row of ones);
    image i's clean and attacked mixtures share its weight, and π̄_clean is the weighted mean of the row."""
    pi_clean = np.asarray(pi_clean, np.float64)
    pi_adv = np.asarray(pi_adv, np.float64)
    if pi_clean.shape != pi_adv.shape or pi_clean.ndim != 2:
        raise ValueError(f"separation: clean and attacked mixtures must both be [images, K]; got {pi_clean.shape} "
                         f"and {pi_adv.shape}.")
    weights = np.ones((1, len(pi_clean))) if weights is None else np.asarray(weights, np.float64)
    out = np.empty(len(weights))
    chunk = max(1, _PAIRS_AT_ONCE // len(pi_clean) ** 2)
    for lo in range(0, len(weights), chunk):
        w = weights[lo:lo + chunk]
        mean = (w @ pi_clean) / w.sum(axis=1, keepdims=True)  # [r, K]
        s_clean = js_divergence(pi_clean[None], mean[:, None])  # [r, N]
        s_adv = js_divergence(pi_adv[None], mean[:, None])
        out[lo:lo + chunk] = weighted_auc(s_adv, s_clean, w, w)
    return out


def kernel_spread(model: Any) -> dict[str, Any]:
    """Per AAconv layer of ``model`` mean_k ‖W_k − W̄‖ / ‖W̄‖ of its K kernels; ``{"layers": {name: value},
    "mean": value}`` (``mean`` None for a model without AAconv layers)."""
    layers = {}
    for layer in _aaconv_layers(model):
        kernel = np.asarray(layer.kernel.numpy(), np.float64)
        flat = kernel.reshape(kernel.shape[0], -1)
        mean = flat.mean(axis=0)
        norm = np.linalg.norm(mean)
        layers[layer.path] = (
            float(np.mean(np.linalg.norm(flat - mean, axis=1)) / norm) if norm > 0 else None)
    values = [v for v in layers.values() if v is not None]
    return {"layers": layers, "mean": float(np.mean(values)) if values else None}


def _aaconv_layers(model: Any) -> list[AAConv2D]:
    """Every AAconv of the model (the CFR layer's two included), in the model's own order."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, AAConv2D)]


def mixtures(model: Any, pairs: Sequence[tuple[tf.Tensor, tf.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """``(pi_clean, pi_adv)`` ``[N, K]`` of ``(clean, attacked)`` image batches (test mode, one trace per shape)."""
    mix: Callable = traced_once(lambda images: model.mixture(images, training=False))
    clean = [mix(c).numpy() for c, _ in pairs]
    adv = [mix(a).numpy() for _, a in pairs]
    return np.concatenate(clean), np.concatenate(adv)


def mechanism(model: Any, pairs: Sequence[tuple[tf.Tensor, tf.Tensor]], bootstrap: BootstrapSpec) -> dict[str, Any]:
    """The three diagnostics of ``model`` on ``(clean, attacked)`` batches, with bootstrap intervals (none when
    ``bootstrap.resamples`` is 0) and the per-image scores under ``per_image`` (for the figure).  A model without
    an AID gets ``{"has_aid": False}``."""
    if not has_aid(model):
        return {"has_aid": False}
    pi_clean, pi_adv = mixtures(model, pairs)
    n = len(pi_clean)
    shift = js_divergence(pi_clean, pi_adv)
    mean_clean = pi_clean.mean(axis=0)
    spread = kernel_spread(model)
    out: dict[str, Any] = {
        "has_aid": True, "num_images": n, "score": SCORE,
        "aid_auc": float(separation(pi_clean, pi_adv)[0]),
        "pi_shift": float(shift.mean()),
        "pi_clean_mean": mean_clean, "pi_adv_mean": pi_adv.mean(axis=0),
        "kernel_spread": spread["mean"], "kernel_spread_layers": spread["layers"],
        "per_image": {"score_clean": js_divergence(pi_clean, mean_clean),
                      "score_adv": js_divergence(pi_adv, mean_clean), "pi_shift": shift},
    }
    if bootstrap.resamples:
        weights = resample_weights(n, int(bootstrap.resamples), int(bootstrap.seed))
        level = float(bootstrap.level)
        out["aid_auc_ci_low"], out["aid_auc_ci_high"] = percentile_interval(separation(pi_clean, pi_adv, weights),
                                                                            level)
        out["pi_shift_ci_low"], out["pi_shift_ci_high"] = percentile_interval(weights @ shift / n, level)
    return out


def finding(results: dict[str, dict[str, Any]], attack: str) -> list[str]:
    """The findings' lines: per model with an AID, its separation AUC with interval, π shift and kernel spread."""
    rows = {name: r for name, r in results.items() if r.get("has_aid")}
    if not rows:
        return []

    def interval(r, key):
        low, high = r.get(f"{key}_ci_low"), r.get(f"{key}_ci_high")
        return "" if low is None else f" [{low:.2f}, {high:.2f}]"

    n = next(iter(rows.values()))["num_images"]

    def transfer(r):
        t = r.get("transfer")
        return "" if not t else f" (made on {t['source']}: {t['aid_auc']:.2f}{interval(t, 'aid_auc')})"

    return [f"AID separation of {attack} from clean images (ROC AUC of JS(π ‖ mean clean π), {n} images, 0.5 = "
            "none): " + ", ".join(f"{name} {r['aid_auc']:.2f}{interval(r, 'aid_auc')}{transfer(r)}"
                                  for name, r in rows.items()),
            "kernel spread (mean over AAconv layers of mean_k ‖W_k − W̄‖/‖W̄‖, 0 = identical kernels) and π shift "
            f"(mean JS(π_clean ‖ π_{attack}), nats): " + ", ".join(
                f"{name} {r['kernel_spread']:.3g} / {r['pi_shift']:.3g}" for name, r in rows.items())]
