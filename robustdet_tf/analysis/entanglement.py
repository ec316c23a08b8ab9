"""Gradient entanglement (paper Fig. 4): how much a clean image's gradient points along its adversarial twin's.

For an image pair and a convolution kernel W, R = g_clean · g_adv / ‖g_adv‖² with g = ∂(loss_l + loss_c)/∂W of
that one image.  R ≈ 1 means a step that lowers the adversarial loss lowers the clean loss by as much (the two
tasks share the weights and agree); R ≈ 0 means the step is orthogonal to the clean task; R < 0 means it raises
the clean loss — the conflict the paper blames for SSD-AT's clean-accuracy drop.  RobustDet's claim is that its
AAconv kernels disentangle the two: each kernel k of an AAconv also gets its own R (the gradient wrt kernel k is
π_k times the gradient wrt the mixed kernel, so a kernel clean images do not use has R near 0).

The ratio is computed per image pair and per layer in the graph (``per_image.pair_gradient_stats``); the layer
summary is the median over pairs (R is a ratio, and a pair whose adversarial gradient is tiny gives a huge value)
and the mean; the whole-network R uses all kernels concatenated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from robustdet_tf.analysis.per_image import detection_loss_fn, entanglement_ratio, pair_gradient_stats
from robustdet_tf.analysis.records import jsonable, nan_stat
from robustdet_tf.compiled import traced_once
from robustdet_tf.models.base import DetectionModelBase


def conv_kernels(model: keras.Model) -> dict[str, tf.Variable]:
    """Every convolution kernel of a detector by layer name (for RobustDet* the CFR layer's mean convolution)."""
    if not isinstance(model, DetectionModelBase):
        raise ValueError(f"gradient entanglement needs a robustdet_tf detector (SSD or RobustDet) with "
                         f"model.detector.all_convs(); got {type(model).__name__}.")
    kernels = {}
    for name, layer in model.detector.all_convs().items():
        layer = getattr(layer, "conv_mean", layer)
        kernels[name] = layer.kernel
    return kernels


def is_multi_kernel(variable: tf.Variable) -> bool:
    """A K-kernel AAconv weight ``[K, kh, kw, Cin, Cout]`` (a plain Conv2D kernel is 4-D)."""
    return len(variable.shape) == 5


def gradient_entanglement(model: keras.Model, batches, max_batches: int | None = None) -> dict[str, Any]:
    """R of every convolution kernel of ``model`` for each image pair of ``batches``.

    ``batches`` yields ``(clean, adversarial, targets)``: the adversarial images are attacked copies of the clean
    ones (made by the caller, usually against the same model).  Returns numpy arrays: ``layers`` (names),
    ``ratio`` ``[N, L]`` (per image pair and layer), ``kernel_ratio`` (layer → ``[N, K]`` for AAconv layers),
    ``overall`` ``[N]`` (all kernels concatenated), ``cosine`` ``[N, L]`` (g_clean·g_adv / (‖g_c‖‖g_a‖)) and the
    gradient norms ``adv_norm``, ``clean_norm`` ``[N, L]``.  R is NaN where ‖g_adv‖ = 0 (e.g. a loc head whose
    priors match no object of that image: its gradient is exactly zero).
    """
    kernels = conv_kernels(model)
    names, variables = list(kernels), list(kernels.values())
    per_kernel = [is_multi_kernel(v) for v in variables]
    loss_fn = detection_loss_fn(model)

    def stats(clean, adv, targets):
        return pair_gradient_stats(loss_fn, variables, per_kernel, clean, adv, targets)

    stats = traced_once(stats)

    collected: list[list[np.ndarray]] = []
    for i, (clean, adv, targets) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        collected.append([s.numpy() for s in stats(clean, adv, targets)])
    if not collected:
        raise ValueError("gradient entanglement got no image pairs: pass at least one (clean, adversarial, targets) "
                         "batch.")
    per_layer = [np.concatenate([batch[j] for batch in collected], 0) for j in range(len(variables))]  # [N, 3, S]
    totals = np.stack([s.sum(-1) for s in per_layer], -1)  # [N, 3, L]
    dot, adv_sq, clean_sq = totals[:, 0], totals[:, 1], totals[:, 2]
    ratio = entanglement_ratio(dot, adv_sq).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = dot / np.sqrt(adv_sq * clean_sq)
    kernel_ratio = {name: entanglement_ratio(s[:, 0], s[:, 1]).numpy()
                    for name, s, multi in zip(names, per_layer, per_kernel) if multi}
    overall = entanglement_ratio(dot.sum(-1), adv_sq.sum(-1)).numpy()
    return {"layers": names, "ratio": ratio, "cosine": cosine, "kernel_ratio": kernel_ratio, "overall": overall,
            "adv_norm": np.sqrt(adv_sq), "clean_norm": np.sqrt(clean_sq)}


def summarize(result: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able summary: per layer (and per AAconv kernel) the median and mean R over image pairs (NaN pairs left
    out), and the overall R."""
    def stat(values) -> dict[str, Any]:
        values = np.asarray(values, np.float64)
        columns = values.reshape(values.shape[0], -1).T if values.ndim > 1 else [values]
        out = {how: [nan_stat(c, how) for c in columns] for how in ("median", "mean")}
        return out if values.ndim > 1 else {how: v[0] for how, v in out.items()}

    return {
        "layers": list(result["layers"]),
        "num_pairs": int(np.asarray(result["overall"]).shape[0]),
        "ratio": stat(result["ratio"]),
        "cosine": stat(result["cosine"]),
        "kernel_ratio": {name: stat(values) for name, values in result["kernel_ratio"].items()},
        "overall": {**stat(result["overall"]), "per_pair": jsonable(result["overall"])},
    }
