"""The prior (anchor) boxes of an SSD, described once by a ``PriorSpec`` (docs/reference.md#prior-boxes).

Why a spec object: the same numbers (feature maps, sizes, aspect ratios, steps) decide the head widths of the
models, the boxes the losses match against, the decode of every export and the config files.  Models build a
``PriorSpec`` from their config, the TFLite sidecar stores ``PriorSpec.to_dict()`` and the configs take their
defaults from ``SSD300_VOC`` / ``SSD300_COCO``, so there is one source of truth.

Priors are ``(cx, cy, w, h)`` relative to the image (``rel_center_xywh``), generated source-major, then row,
column, anchor: the order a channels-last reshape of the head outputs produces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def boxes_per_location(aspect_ratios: Sequence[Sequence[float]]) -> tuple[int, ...]:
    """Anchors per feature-map cell: two squares plus two boxes per aspect ratio."""
    return tuple(2 + 2 * len(ars) for ars in aspect_ratios)


def prior_boxes(
    image_size: int,
    feature_maps: Sequence[int],
    min_sizes: Sequence[float],
    max_sizes: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float] | None = None,
    clip: bool = True,
) -> np.ndarray:
    """Prior boxes ``[P, 4]`` in centre form, in the reference's order.

    ``steps`` gives the reference's ``f_k = image_size / step`` (37.5 for the 38 map of SSD300, not 38); when it is
    ``None`` the feature-map size itself is used, which is what a config for another image size wants.
    Sizes are in pixels of ``image_size``.  Clipping is applied to the centre form as the reference does.
    """
    if not (len(feature_maps) == len(min_sizes) == len(max_sizes) == len(aspect_ratios)):
        raise ValueError(
            "prior config lists must have one entry per source: got feature_maps="
            f"{list(feature_maps)}, min_sizes={list(min_sizes)}, max_sizes={list(max_sizes)}, "
            f"aspect_ratios={list(aspect_ratios)}"
        )
    if steps is not None and len(steps) != len(feature_maps):
        raise ValueError(f"steps {list(steps)} must have one entry per feature map {list(feature_maps)}")
    out = []
    for k, f in enumerate(feature_maps):
        f_k = image_size / steps[k] if steps is not None else float(f)
        s = min_sizes[k] / image_size
        s_prime = math.sqrt(s * (max_sizes[k] / image_size))
        shapes = [(s, s), (s_prime, s_prime)]
        for ar in aspect_ratios[k]:
            r = math.sqrt(ar)
            shapes += [(s * r, s / r), (s / r, s * r)]
        shapes = np.asarray(shapes, np.float64)  # [A, 2]
        rows, cols = np.meshgrid(np.arange(f), np.arange(f), indexing="ij")
        cx = (cols.reshape(-1) + 0.5) / f_k
        cy = (rows.reshape(-1) + 0.5) / f_k
        centres = np.stack([cx, cy], axis=-1)[:, None, :].repeat(len(shapes), axis=1)  # [f*f, A, 2]
        sizes = np.broadcast_to(shapes[None], centres.shape)
        out.append(np.concatenate([centres, sizes], axis=-1).reshape(-1, 4))
    priors = np.concatenate(out, axis=0)
    if clip:
        priors = np.clip(priors, 0.0, 1.0)
    return priors.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PriorSpec:
    """Everything that decides an SSD's priors.

    Attributes:
      min_sizes, max_sizes: per source, in pixels of ``image_size``.
      aspect_ratios: per source, the extra ratios (each adds two boxes).
      steps: per source, the reference's stride (``f_k = image_size / step``), or ``None`` to use the map size.
      image_size: square input size the sizes refer to.
      feature_maps: per source, the map size; ``None`` until a model derives it from its layers
        (``with_feature_maps``).
    """

    min_sizes: tuple[float, ...]
    max_sizes: tuple[float, ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    steps: tuple[float, ...] | None = None
    image_size: int = 300
    feature_maps: tuple[int, ...] | None = None

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("min_sizes", tuple(float(v) for v in self.min_sizes))
        set_("max_sizes", tuple(float(v) for v in self.max_sizes))
        set_("aspect_ratios", tuple(tuple(float(a) for a in ars) for ars in self.aspect_ratios))
        steps = self.steps
        if steps is not None and all(v is None for v in steps):
            steps = None  # --config.model.steps=None on a config whose steps are a tuple arrives as (None,)
        if steps is not None and any(v is None for v in steps):
            raise ValueError(f"model.steps {tuple(steps)} mixes numbers and None: give one stride per source, or "
                             "None to use the feature-map sizes.")
        set_("steps", None if steps is None else tuple(float(v) for v in steps))
        set_("image_size", int(self.image_size))
        set_("feature_maps", None if self.feature_maps is None else tuple(int(v) for v in self.feature_maps))

    KEYS = ("min_sizes", "max_sizes", "aspect_ratios", "steps")
    """The keys a model config spells the spec with (``image_size`` is the model's own key)."""

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> PriorSpec:
        """From a model config or a ``to_dict()``; keys other than the spec's are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: config[k] for k in fields if k in config})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: lists instead of tuples."""
        listify = lambda v: [listify(x) for x in v] if isinstance(v, (tuple, list)) else v  # noqa: E731
        return {f.name: listify(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def with_feature_maps(self, image_size: int, feature_maps: Sequence[int]) -> PriorSpec:
        return dataclasses.replace(self, image_size=image_size, feature_maps=tuple(feature_maps))

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        return boxes_per_location(self.aspect_ratios)

    def boxes(self) -> np.ndarray:
        """The priors ``[P, 4]`` (``rel_center_xywh``, float32)."""
        if self.feature_maps is None:
            raise ValueError("PriorSpec.boxes() needs feature_maps; a model sets them with with_feature_maps()")
        return prior_boxes(self.image_size, self.feature_maps, self.min_sizes, self.max_sizes, self.aspect_ratios,
                           self.steps)


# The two SSD300 prior configurations of the reference (docs/reference.md#prior-boxes).
_SSD300_COMMON = dict(aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)), steps=(8, 16, 32, 64, 100, 300),
                      image_size=300, feature_maps=(38, 19, 10, 5, 3, 1))
SSD300_VOC = PriorSpec(min_sizes=(30, 60, 111, 162, 213, 264), max_sizes=(60, 111, 162, 213, 264, 315),
                       **_SSD300_COMMON)
SSD300_COCO = PriorSpec(min_sizes=(21, 45, 99, 153, 207, 261), max_sizes=(45, 99, 153, 207, 261, 315),
                        **_SSD300_COMMON)


def ssd300_priors(dataset: str = "voc") -> np.ndarray:
    """The 8732 priors of the reference's VOC or COCO SSD300 configuration."""
    specs = {"voc": SSD300_VOC, "coco": SSD300_COCO}
    if dataset not in specs:
        raise ValueError(f"unknown SSD300 prior set {dataset!r}; use 'voc' or 'coco'")
    return specs[dataset].boxes()
