"""Paired bootstrap intervals over images for every cell of a robustness table, from the metric states it keeps.

Why a bootstrap over images: a table cell is one mAP over a finite evaluation set, and the set is a sample.  With
60 images an attacked cell moves by a few points when other images are drawn, which is the size of most effects a
robustness table is read for.  Resampling the images with replacement and recomputing the mAP gives that spread
without running a model again.

Why paired: every cell of one table is computed on the same resampled images (one weight matrix ``[resamples,
images]`` shared by all cells), so the difference of two models under one attack is resampled image by image.  Two
models that fail on the same hard images then have a narrow difference interval even if each cell's own interval
is wide; a model compared with itself has a difference of exactly 0 in every resample.

Why weights instead of rebuilt metrics: the matching of a detection to the ground truth depends only on its own
image (VOC's greedy matching and COCO's per-image ``evaluateImg`` both run image by image), so an image drawn ``w``
times contributes each of its detections ``w`` times with the same true/false-positive flag and its ground truth
``w`` times.  One matching per cell (``ranked_matches()`` of ``VOCMetric`` / ``COCOMetric``) then gives every
resample's AP as weighted cumulative sums over the detections sorted once: thousands of resamples cost seconds.  It
equals recomputing the metric on the resampled set, except for the order of detections with *tied* scores (the
reference VOC mode rounds scores to 3 decimals), where the resampled set's order is itself arbitrary.

Intervals are percentile intervals (the 2.5 and 97.5 percentiles of the resampled values for a 95 % level).  The
headline number of each cell is the one-pass metric, not the resamples' mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

AP_KINDS = ("voc07", "voc", "coco101")
"""How a precision/recall curve becomes an AP: VOC2007 11-point, VOC2010+ all-point, COCO's 101-point."""

LOWEST = "Lowest"
"""The pseudo-attack of ``differences`` comparing two models' lowest attacked cells (resample by resample)."""

# Upper bound on resamples × detections held at once (float64: about 32 MB per array).
_CHUNK_ELEMENTS = 4_000_000


@dataclass(frozen=True)
class RankedMatches:
    """One cell's matching, everything a resample needs: per class, the detections sorted by descending score
    (their image index and true/false-positive flags; detections that count as neither have both flags 0) and the
    number of positives per image.

    Attributes:
      kind: one of ``AP_KINDS``.
      num_images: images of the cell, in the metric's order.
      images: per class, ``[nd]`` int image index of each sorted detection.
      tp, fp: per class, ``[nd]`` float 0/1 flags.
      npos: ``[num_images, classes]`` positives (non-difficult / non-ignored ground truth) per image and class.
    """

    kind: str
    num_images: int
    images: tuple[np.ndarray, ...]
    tp: tuple[np.ndarray, ...]
    fp: tuple[np.ndarray, ...]
    npos: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in AP_KINDS:
            raise ValueError(f"RankedMatches.kind must be one of {AP_KINDS}, got {self.kind!r}.")
        classes = self.npos.shape[1] if self.npos.ndim == 2 else -1
        if self.npos.shape[0] != self.num_images or not (len(self.images) == len(self.tp) == len(self.fp) == classes):
            raise ValueError(f"RankedMatches: npos {self.npos.shape} does not fit {self.num_images} images and "
                             f"{len(self.images)} classes.")


def resample_weights(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, num_images]`` counts: how often each image is drawn in each bootstrap resample (rows sum to
    ``num_images``).  The same seed gives the same matrix."""
    if num_images < 1:
        raise ValueError(f"a bootstrap needs at least one image; the table has {num_images}.")
    if resamples < 1:
        raise ValueError(f"eval.bootstrap.resamples must be >= 1, got {resamples}.")
    rng = np.random.default_rng(int(seed))
    draws = rng.integers(0, num_images, size=(int(resamples), int(num_images)))
    weights = np.zeros((int(resamples), int(num_images)), np.float64)
    np.add.at(weights, (np.arange(int(resamples))[:, None], draws), 1.0)
    return weights


def _class_ap(kind: str, weights: np.ndarray, npos: np.ndarray, tp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``[R]`` APs of one class for ``[R, nd]`` per-detection weights and ``[R]`` weighted positives."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if tp.size == 0:
            return np.where(npos > 0, 0.0, np.nan)
        tp_cum = np.cumsum(weights * tp, axis=1)
        fp_cum = np.cumsum(weights * fp, axis=1)
        recall = tp_cum / npos[:, None]
        if kind == "coco101":
            precision = tp_cum / (tp_cum + fp_cum + np.spacing(1))
        else:
            precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        nd = tp.size
        rows = np.arange(weights.shape[0])
        if kind == "voc":
            steps = np.diff(recall, axis=1, prepend=0.0)
            ap = np.sum(steps * envelope, axis=1)
        else:
            thresholds = np.arange(0.0, 1.1, 0.1) if kind == "voc07" else np.linspace(0.0, 1.0, 101)
            ap = np.zeros(weights.shape[0])
            for t in thresholds:
                # First detection whose recall reaches t (recall never decreases); none: contributes 0.
                first = np.sum(recall < t, axis=1)
                reached = first < nd
                ap += np.where(reached, envelope[rows, np.minimum(first, nd - 1)], 0.0)
            ap /= len(thresholds)
    return np.where(npos > 0, ap, np.nan)


def resampled_map(matches: RankedMatches, weights: np.ndarray) -> np.ndarray:
    """``[R]`` mAP of the cell for each row of ``weights`` (``[R, num_images]``); classes without positives in a
    resample are left out of its mean, as the metrics do.  All-ones weights give the one-pass mAP."""
    weights = np.asarray(weights, np.float64)
    if weights.ndim != 2 or weights.shape[1] != matches.num_images:
        raise ValueError(f"resampled_map: weights must be [resamples, {matches.num_images}], got {weights.shape}.")
    out = np.empty(weights.shape[0])
    longest = max([len(t) for t in matches.tp] + [1])
    chunk = max(1, _CHUNK_ELEMENTS // longest)
    for lo in range(0, weights.shape[0], chunk):
        w = weights[lo:lo + chunk]
        npos = w @ matches.npos
        aps = np.stack([_class_ap(matches.kind, w[:, images], npos[:, c], tp, fp)
                        for c, (images, tp, fp) in enumerate(zip(matches.images, matches.tp, matches.fp,
                                                                 strict=True))], axis=1)
        with np.errstate(invalid="ignore"):
            defined = ~np.isnan(aps)
            total = np.where(defined, aps, 0.0).sum(axis=1)
            count = defined.sum(axis=1)
            out[lo:lo + chunk] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """The central ``level`` percentile interval of ``samples`` (NaN resamples are left out; ``None`` if all are)."""
    samples = np.asarray(samples, np.float64)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return None, None
    tail = 100.0 * (1.0 - float(level)) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class BootstrapSpec:
    """``config.eval.bootstrap``: number of resamples, seed and level of the intervals (``resamples = 0``: none)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95

    def __post_init__(self) -> None:
        if int(self.resamples) < 0:
            raise ValueError(f"eval.bootstrap.resamples must be >= 0 (0: no intervals), got {self.resamples}.")
        if not 0.0 < float(self.level) < 1.0:
            raise ValueError(f"eval.bootstrap.level must be in (0, 1), e.g. 0.95; got {self.level}.")

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any] | None) -> BootstrapSpec:
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {"resamples", "seed", "level"})
        if unknown:
            raise KeyError(f"eval.bootstrap has unknown key(s) {unknown}; it takes resamples, seed and level.")
        return cls(**{k: type(getattr(cls, k))(v) for k, v in settings.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"resamples": int(self.resamples), "seed": int(self.seed), "level": float(self.level)}


def table_intervals(
    cells: Mapping[tuple[str, str], RankedMatches],
    models: Sequence[str],
    attacks: Sequence[str],
    spec: BootstrapSpec,
    composites: Mapping[str, Sequence[str]] | None = None,
    unattacked: Sequence[str] = ("clean",),
    ratios: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Intervals of every cell, of each model's lowest attacked cell, and paired differences per attack.

    Args:
      cells: ``(model, attack)`` → its matching; every cell must hold the same number of images (the same images
        in the same order: the table's evaluation set).
      models, attacks: the table's row and column order (cells missing from ``cells`` are not applicable).
      composites: column → the cells it averages (``Corrupt`` → its corruption/severity cells): in every resample
        the column is the mean of those cells' resampled mAPs; its sub-cells get intervals too.
      unattacked: columns that are no attack and stay out of the lowest cell (``clean``, ``Corrupt``).
      ratios: name → (numerator column, denominator column), a per-model ratio resampled pair by pair (``rPC`` =
        ``Corrupt`` / ``clean``); returned under ``"ratios"``: ``{model: {name: (point, low, high)}}``.

    Returns ``{"cells": {model: {attack: (low, high)}}, "lowest": {model: (low, high)}, "differences": [...]}``
    where each difference is ``{"attack", "model_a", "model_b", "difference", "ci_low", "ci_high"}`` (model_a
    minus model_b, as a fraction; the point value is the one-pass difference).  The ``attack`` ``LOWEST`` compares
    the two models' lowest attacked cells, each resample taking each model's minimum over the attacked columns.
    """
    counts = {m.num_images for m in cells.values()}
    if len(counts) > 1:
        raise ValueError(f"paired bootstrap: the table's cells hold different numbers of images {sorted(counts)}; "
                         "every cell must be evaluated on the same images.")
    if not cells or spec.resamples == 0:
        return {"cells": {}, "lowest": {}, "differences": [], "ratios": {}}
    num_images = counts.pop()
    weights = resample_weights(num_images, spec.resamples, spec.seed)
    ones = np.ones((1, num_images))
    samples = {key: resampled_map(m, weights) for key, m in cells.items()}
    points = {key: float(resampled_map(m, ones)[0]) for key, m in cells.items()}
    for column, parts in (composites or {}).items():
        for model in models:
            if parts and all((model, part) in samples for part in parts):
                samples[(model, column)] = np.mean(np.stack([samples[(model, part)] for part in parts]), axis=0)
                points[(model, column)] = float(np.mean([points[(model, part)] for part in parts]))
    out: dict[str, Any] = {"cells": {m: {} for m in models}, "lowest": {}, "differences": [], "ratios": {}}
    for (model, attack), values in samples.items():
        out["cells"][model][attack] = percentile_interval(values, spec.level)
    for name, (numerator, denominator) in (ratios or {}).items():
        for model in models:
            if (model, numerator) in samples and (model, denominator) in samples:
                with np.errstate(invalid="ignore", divide="ignore"):
                    resampled = samples[(model, numerator)] / samples[(model, denominator)]
                resampled[~np.isfinite(resampled)] = np.nan  # a resample whose denominator is 0 has no ratio
                denominator_point = points[(model, denominator)]
                point = points[(model, numerator)] / denominator_point if denominator_point else float("nan")
                out["ratios"].setdefault(model, {})[name] = (point, *percentile_interval(resampled, spec.level))
    for model in models:
        attacked = [a for a in attacks if a not in unattacked and (model, a) in samples]
        if attacked:
            with np.errstate(invalid="ignore"):
                samples[(model, LOWEST)] = np.min(np.stack([samples[(model, a)] for a in attacked]), axis=0)
            points[(model, LOWEST)] = min(points[(model, a)] for a in attacked)
            out["lowest"][model] = percentile_interval(samples[(model, LOWEST)], spec.level)
    for attack in [*attacks, LOWEST]:
        for model_a, model_b in itertools.combinations(models, 2):
            if (model_a, attack) not in samples or (model_b, attack) not in samples:
                continue
            low, high = percentile_interval(samples[(model_a, attack)] - samples[(model_b, attack)], spec.level)
            out["differences"].append({"attack": attack, "model_a": model_a, "model_b": model_b,
                                       "difference": points[(model_a, attack)] - points[(model_b, attack)],
                                       "ci_low": low, "ci_high": high})
    return out


def with_intervals(table: Mapping[str, Mapping[str, float | None]], worst: Mapping[str, Mapping[str, Any]],
                   intervals: Mapping[str, Any], spec: BootstrapSpec, num_images: int) -> dict[str, Any]:
    """The ``robustness.json`` entries that carry the intervals: ``cells`` (each value with its ``ci_low`` and
    ``ci_high``), ``worst_case`` (the lowest attacked cell with the interval of the per-resample minimum over the
    attacked cells), ``differences`` and ``bootstrap`` (the settings)."""
    cells: dict[str, dict[str, dict[str, float | None]]] = {}
    for model, row in table.items():
        cells[model] = {}
        for attack, value in row.items():
            low, high = intervals["cells"].get(model, {}).get(attack, (None, None))
            cells[model][attack] = {"mAP": value, "ci_low": low, "ci_high": high}
    worst_case = {}
    for model, low_cell in worst.items():
        low, high = intervals["lowest"].get(model, (None, None))
        worst_case[model] = {**low_cell, "ci_low": low, "ci_high": high}
    return {"cells": cells, "worst_case": worst_case, "differences": list(intervals["differences"]),
            "bootstrap": {**spec.to_dict(), "num_images": int(num_images),
                          "method": "paired percentile bootstrap over images (the same resamples for every cell)"}}
