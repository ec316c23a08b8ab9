"""A universal adversarial patch: one square of pixels, fitted once on training images, pasted on every image.

Why a second threat model: the PGD family moves every pixel by at most ε.  A patch is the other standard attack on
detectors (DPatch, Liu et al. 2019; Lee & Kolter 2019): a few pixels changed without bound, the same pixels for
every image (*universal*), so it could be printed and stuck on a scene.  A defence tuned to small L∞ noise need not
resist it, and RobustDet's discriminator has never seen one.

- **Budget**: the area.  The patch is a ``side × side`` square, ``side = round(spec.size · min(H, W))``; inside it
  every pixel may take any value in ``[0, 255]``; outside it no pixel is ever changed.
- **Placement**: ``"center"`` pastes it in the middle of every image; ``"random"`` draws a location per image (the
  whole patch inside the image) from a stateless seed of ``(spec.seed, key)``, where ``key`` names the image: its
  position in the training stream while fitting, a fingerprint of its pixels when it is attacked
  (``content_keys``; see ``patch_attack`` for why).
- **Fitting** (``fit_universal_patch``): signed-gradient ascent of an attack objective (``objectives.py``; default
  ``cls``, A_cls's confidence loss) on the patched training images, each step a batch of ``spec.batch_size`` images
  with the patch at their drawn locations (an expectation over placements), the patch clipped to ``[0, 255]``
  after every step.  It starts from uniform noise drawn from ``spec.seed``, so a fitted patch is a pure function of
  the model, the training stream and the spec.

Pasting is exact (no interpolation), so the patch an evaluation pastes is bit for bit the one that was fitted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from robustdet_tf.attacks.model_protocol import check_attackable
from robustdet_tf.attacks.objectives import OBJECTIVES, make_objective
from robustdet_tf.attacks.spec import known_settings
from robustdet_tf.compiled import traced_once

AttackFn = Callable[[keras.Model, tf.Tensor, Mapping[str, tf.Tensor]], tf.Tensor]
"""``(model, images, targets) → images``: what the robustness table calls (``evaluation.evaluate.AttackFn``)."""

PLACEMENTS = ("random", "center")
_SEED_WORD = 0x9A7C  # second word of the base stateless seed; only separates the patch's streams from others
_INIT_TAG, _TOP_TAG, _LEFT_TAG = 0, 1, 2
_HASH_BUCKETS = 2**63 - 1  # the whole non-negative int64 range: distinct images practically never share a key


def _number(name: str, value: Any, kind: type, example: str) -> Any:
    """``value`` as ``kind`` (an integer must be whole), or a ValueError naming the field and a valid value."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"patch {name} must be a number, e.g. {name}={example}; got {value!r}") from None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        what = "a whole number" if kind is int else "a finite number"
        raise ValueError(f"patch {name} must be {what}, e.g. {name}={example}; got {value!r}")
    return kind(number)


@dataclasses.dataclass(frozen=True)
class PatchSpec:
    """One universal patch attack (see the module docstring).

    Attributes:
      size: the patch side as a fraction of the image side (of the shorter side), in ``(0, 1]``; 0.15 of a 300 px
        image is a 45 × 45 square, 2.25 % of the image.
      steps: optimisation steps of the fit (each one batch of ``batch_size`` training images).
      step_size: the signed-gradient step, in pixels.
      objective: what the patch ascends, one of ``objectives.OBJECTIVES`` (``cls`` = A_cls's confidence loss).
      placement: ``"random"`` (a location per image, drawn from ``seed`` and the image's key) or ``"center"``.
      seed: seed of the initial patch and of the random placements (stateless draws: no global RNG).
      batch_size: training images per optimisation step.
    """

    size: float = 0.15
    steps: int = 100
    step_size: float = 4.0
    objective: str = "cls"
    placement: str = "random"
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen dataclass)
        set_("size", _number("size", self.size, float, "0.15"))
        set_("steps", _number("steps", self.steps, int, "100"))
        set_("step_size", _number("step_size", self.step_size, float, "4.0"))
        set_("seed", _number("seed", self.seed, int, "0"))
        set_("batch_size", _number("batch_size", self.batch_size, int, "8"))
        if not 0.0 < self.size <= 1.0:
            raise ValueError(f"patch size is the patch side as a fraction of the image side and must lie in (0, 1], "
                             f"e.g. size=0.15; got {self.size:g}")
        if self.steps < 0:
            raise ValueError(f"patch steps must be >= 0 (0 = the initial random patch), e.g. steps=100; "
                             f"got {self.steps}")
        if self.step_size <= 0:
            raise ValueError(f"patch step_size is a signed-gradient step in pixels and must be > 0, e.g. "
                             f"step_size=4.0; got {self.step_size:g}")
        if self.batch_size < 1:
            raise ValueError(f"patch batch_size must be >= 1, e.g. batch_size=8; got {self.batch_size}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"patch objective {self.objective!r} is not one of {OBJECTIVES}, e.g. objective='cls'")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"patch placement {self.placement!r} is not one of {PLACEMENTS}, e.g. "
                             "placement='random'")

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any], where: str = "patch") -> PatchSpec:
        """From a config mapping; an unknown key fails with the accepted ones (``where`` names the config)."""
        return cls(**known_settings(cls, settings, where))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> PatchSpec:
        return dataclasses.replace(self, **changes)

    def side(self, height: int, width: int) -> int:
        """The patch side in pixels on ``height × width`` images (at least one pixel)."""
        return max(1, int(math.floor(self.size * min(int(height), int(width)) + 0.5)))


def initial_patch(spec: PatchSpec, side: int) -> tf.Tensor:
    """Uniform noise in ``[0, 255]``, ``[side, side, 3]``, drawn from ``spec.seed``: where a fit starts, and (with
    another seed) the random patch a fitted one is compared with."""
    seed = tf.random.experimental.stateless_fold_in(tf.constant([spec.seed, _SEED_WORD], tf.int64), _INIT_TAG)
    return tf.random.stateless_uniform([side, side, 3], seed, 0.0, 255.0, dtype=tf.float32)


def patch_locations(spec: PatchSpec, keys: tf.Tensor, height, width, side: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``(tops, lefts)`` int32 ``[B]``: the upper-left corner of the patch on each image.

    ``"random"``: every corner with the whole patch inside the image is equally likely, drawn from a stateless
    seed of ``(spec.seed, key)`` alone, so an image's location depends neither on the batch it is in nor on the
    model; a graph loop of scalar draws over the batch (``tf.map_fn``), since a stateless op takes one seed."""
    keys = tf.cast(tf.convert_to_tensor(keys), tf.int64)
    room_y, room_x = height - side + 1, width - side + 1
    if spec.placement == "center":
        count = tf.shape(keys)[:1]
        return tf.fill(count, (room_y - 1) // 2), tf.fill(count, (room_x - 1) // 2)
    return _random_corners(tf.constant([spec.seed, _SEED_WORD], tf.int64), keys, tf.cast(room_y, tf.int32),
                           tf.cast(room_x, tf.int32))


@tf.function(autograph=False, reduce_retracing=True)
def _random_corners(base: tf.Tensor, keys: tf.Tensor, room_y: tf.Tensor, room_x: tf.Tensor):
    """The random corners of ``patch_locations``; a graph function, so that an eager call (a notebook, a test)
    runs the per-image loop as one graph loop rather than one eager op per image (about 100 times slower)."""

    def draw(key):
        seed = tf.random.experimental.stateless_fold_in(base, key)
        top = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, _TOP_TAG), 0, room_y,
                                          dtype=tf.int32)
        left = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(seed, _LEFT_TAG), 0, room_x,
                                           dtype=tf.int32)
        return tf.stack([top, left])

    corners = tf.map_fn(draw, keys, fn_output_signature=tf.TensorSpec([2], tf.int32))
    return corners[:, 0], corners[:, 1]


def paste(images: tf.Tensor, patch: tf.Tensor, tops: tf.Tensor, lefts: tf.Tensor) -> tf.Tensor:
    """``images`` with ``patch`` pasted at ``(tops[b], lefts[b])`` on image ``b``: exact pixel copies (two gathers
    and a select, differentiable in the patch), every pixel outside the box the input's own."""
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    patch_h, patch_w = tf.shape(patch)[0], tf.shape(patch)[1]
    rows = tf.range(height)[None, :] - tf.cast(tops, tf.int32)[:, None]  # [B, H]: row of the patch, if inside
    cols = tf.range(width)[None, :] - tf.cast(lefts, tf.int32)[:, None]  # [B, W]
    canvas = tf.gather(patch, tf.clip_by_value(rows, 0, patch_h - 1))  # [B, H, w, 3]
    canvas = tf.gather(canvas, tf.clip_by_value(cols, 0, patch_w - 1), axis=2, batch_dims=1)  # [B, H, W, 3]
    inside = ((rows >= 0) & (rows < patch_h))[:, :, None] & ((cols >= 0) & (cols < patch_w))[:, None, :]
    return tf.where(inside[..., None], tf.cast(canvas, images.dtype), images)


def _check_patch(patch: tf.Tensor, spec: PatchSpec, images: tf.Tensor) -> None:
    """Refuse a patch that is not the ``[side, side, 3]`` square ``spec.size`` asks for on these images (a patch
    fitted on other image sizes, another spec), checked on static shapes while tracing."""
    if patch.shape.rank != 3 or patch.shape[-1] != 3:
        raise ValueError(f"a patch is [side, side, 3] RGB pixels; got shape {patch.shape}")
    height, width = images.shape[1], images.shape[2]
    if height is None or width is None or None in patch.shape[:2]:
        return
    side = spec.side(height, width)
    if tuple(patch.shape[:2]) != (side, side):
        raise ValueError(f"the patch is {patch.shape[0]}×{patch.shape[1]} pixels, but spec.size={spec.size:g} of "
                         f"these {height}×{width} images asks for {side}×{side}; fit the patch on images of this size "
                         "with this spec")


def apply_patch(images: tf.Tensor, patch: tf.Tensor, spec: PatchSpec, image_index: tf.Tensor) -> tf.Tensor:
    """``images`` ``[B, H, W, 3]`` in ``[0, 255]`` with ``patch`` (clipped to ``[0, 255]``) pasted at each image's
    location: ``image_index`` ``[B]`` integers name the images, and the same index always gets the same location
    (``patch_locations``), whichever model, run or batch.  Graph code; pixels outside the box are never changed."""
    images = tf.convert_to_tensor(images, tf.float32)
    patch = tf.clip_by_value(tf.convert_to_tensor(patch, tf.float32), 0.0, 255.0)
    _check_patch(patch, spec, images)
    keys = tf.reshape(tf.cast(tf.convert_to_tensor(image_index), tf.int64), [-1])
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    tops, lefts = patch_locations(spec, keys, height, width, tf.shape(patch)[0])
    return paste(images, patch, tops, lefts)


def content_keys(images: tf.Tensor) -> tf.Tensor:
    """int64 ``[B]``: a fingerprint (FarmHash of the float32 bytes, ``tf.strings.to_hash_bucket_fast``) of each
    image's pixels, the key of its placement when the attack is given no image index."""
    return _fingerprints(tf.convert_to_tensor(images, tf.float32))


@tf.function(autograph=False, reduce_retracing=True)
def _fingerprints(images: tf.Tensor) -> tf.Tensor:
    """``content_keys`` as a graph function (one graph loop over the images also when called eagerly)."""
    serialized = tf.map_fn(tf.io.serialize_tensor, images, fn_output_signature=tf.string)
    return tf.strings.to_hash_bucket_fast(serialized, _HASH_BUCKETS)


def patch_attack(patch: tf.Tensor, spec: PatchSpec) -> AttackFn:
    """The attack of a robustness-table column: ``(model, images, targets) → images`` with ``patch`` pasted.

    The table gives an attack no image index, and the placement must still be the same for an image in every
    model's cell, every shard and every batch size.  So the key of an image's placement is a fingerprint of its own
    pixels (``content_keys``): a pure function of the image, which every cell receives bit for bit from the same
    pipeline.  A key from the image's position in its batch would move the patch when the batch size or the shard
    boundaries change; a key from its targets would give two images with the same annotation one location (and the
    table strips ``image_id`` before an attack).  The model and targets are not used: the patch is universal."""
    patch = tf.clip_by_value(tf.convert_to_tensor(patch, tf.float32), 0.0, 255.0)
    if patch.shape.rank != 3 or patch.shape[-1] != 3:
        raise ValueError(f"a patch is [side, side, 3] RGB pixels; got shape {patch.shape}")

    def attack(model: keras.Model, images: tf.Tensor, targets: Mapping[str, tf.Tensor]) -> tf.Tensor:
        del model, targets  # universal: the same pixels whatever the model and the objects
        return apply_patch(images, patch, spec, content_keys(images))

    return attack


def _training_stream(batches: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """``batches`` (``(images, targets)`` as ``data/pipeline.py`` yields them) repeated and re-batched to
    ``batch_size`` images, so every step has a full batch of one shape (one trace) whatever the pipeline's batch
    size and the number of images (fewer images than ``batch_size`` recur within a batch, at other locations);
    targets reduced to ``boxes`` and ``labels`` (difficult objects become padding, as an evaluation attack aims at
    them)."""
    spec = batches.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], Mapping)
            and {"boxes", "labels"} <= set(spec[1])):
        raise TypeError("fit_universal_patch: batches must yield (images [B, H, W, 3], {'boxes', 'labels', ...}) as "
                        f"robustdet_tf.data.pipeline's train_batches and eval_batches do; got elements {spec!r}")

    def select(images, targets):
        labels = targets["labels"]
        if "difficult" in targets:
            labels = tf.where(tf.cast(targets["difficult"], tf.bool), -1, labels)
        return tf.cast(images, tf.float32), {"boxes": targets["boxes"], "labels": labels}

    stream = batches.map(select).unbatch().repeat().batch(batch_size, drop_remainder=True)
    options = tf.data.Options()
    options.deterministic = True
    return stream.with_options(options)


def fit_universal_patch(model: keras.Model, batches: tf.data.Dataset, spec: PatchSpec = PatchSpec()) -> tf.Tensor:
    """One patch for all images, ``[side, side, 3]`` in ``[0, 255]``, fitted on ``batches`` (training images).

    Step ``s`` takes the next ``spec.batch_size`` images of the (repeated) stream, pastes the patch on image ``k``
    of the stream at its location from key ``k`` (so successive passes see new placements: an expectation over
    placements), and moves the patch by ``spec.step_size · sign(∇)`` of ``spec.objective`` on the patched batch,
    then clips it to ``[0, 255]``.  The step is one graph function traced once per batch shape; Python only loops
    over the steps.  Deterministic: the initial patch and the placements are stateless draws from ``spec.seed``,
    and the stream keeps the order of ``batches``.
    """
    check_attackable(model, "patch")
    iterator = iter(_training_stream(batches, spec.batch_size))
    try:
        images, targets = next(iterator)
    except StopIteration:
        raise ValueError("fit_universal_patch: the training batches hold no image; give it the training set's "
                         "batches (robustdet_tf.data.pipeline.train_batches)") from None
    height, width = int(images.shape[1]), int(images.shape[2])
    side = spec.side(height, width)
    objective = make_objective(spec.objective)

    def step(patch, images, targets, keys):
        tops, lefts = patch_locations(spec, keys, height, width, side)
        with tf.GradientTape() as tape:
            tape.watch(patch)
            value = objective(model, paste(images, patch, tops, lefts), targets)
        gradient = tape.gradient(value, patch)
        return tf.clip_by_value(patch + spec.step_size * tf.sign(gradient), 0.0, 255.0)

    compiled = traced_once(step)
    patch = initial_patch(spec, side)
    for index in range(spec.steps):
        if index:
            images, targets = next(iterator)
        keys = tf.range(index * spec.batch_size, (index + 1) * spec.batch_size, dtype=tf.int64)
        patch = compiled(patch, images, targets, keys)
    return patch
