"""Synthetic "shapes" detection dataset, generated on the fly with stateless TF ops.

Why it exists: the demo, the tests and the benchmarks need a detection dataset that ships with the code (no
download, no files), is identical on every machine, and is still hard enough that a small SSD has to learn
*shape* and *localisation* rather than a shortcut:

* the class is the geometric shape (``SHAPES_CLASSES``); colours come from per-class hue families that each cover
  60% of the hue circle, so any colour is compatible with several classes and colour alone does not give the class;
* backgrounds are textured (two-colour gradients, stripes of random frequency and angle, low-frequency colour blobs,
  pixel noise) and carry unlabelled thin-line distractors;
* objects are shaded and noisy, range from ~8% to ~70% of the image side, have random aspect ratios, and later
  objects are drawn over earlier ones.  An object is annotated only if at least ``min_visible`` (default 40%) of
  its own pixels remain visible; otherwise it is dropped (it becomes clutter).  The last drawn object is never
  occluded, so every image has at least one box.

Example ``i`` depends only on ``(seed, i)`` through ``tf.random.stateless_*`` ops, so examples are reproducible,
independent of the order or the parallelism with which they are generated, and cheap (no Python per pixel).

Boxes are amodal (the full extent of the shape, also where it is partly covered), snapped to the pixel grid, and
given in the package box format ``rel_xyxy``.  Every shape touches all four sides of its box.
"""

from __future__ import annotations

import math

import tensorflow as tf

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "diamond")

# Sampling ranges, kept as module constants so that the dataset's difficulty is documented in one place.
_MIN_SIDE, _MAX_SIDE = 0.08, 0.70  # object side as a fraction of the image side (log-uniform)
_MAX_LOG_ASPECT = 0.35  # width / height = exp(U(-0.35, 0.35)), i.e. about 0.70 .. 1.42
_HUE_FAMILY_HALF_WIDTH = 0.30  # each class draws its hue from a window of 0.6 of the hue circle
_MAX_DISTRACTOR_LINES = 3
_RING_INNER_RADIUS = 0.55
_CROSS_HALF_ARM = 0.34


def _key(seed: tf.Tensor, tag: int) -> tf.Tensor:
    """A sub-seed for one random quantity; tags keep the streams of different quantities independent."""
    return tf.random.experimental.stateless_fold_in(seed, tag)


def _uniform(seed: tf.Tensor, tag: int, shape, low=0.0, high=1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, _key(seed, tag), minval=low, maxval=high, dtype=tf.float32)


def _randint(seed: tf.Tensor, tag: int, shape, low: int, high) -> tf.Tensor:
    """Integers in [low, high) (``high`` may be a tensor)."""
    return tf.random.stateless_uniform(shape, _key(seed, tag), minval=low, maxval=high, dtype=tf.int32)


def _hsv_colour(hue: tf.Tensor, sat: tf.Tensor, val: tf.Tensor) -> tf.Tensor:
    """RGB in [0, 255] for HSV in [0, 1]; hue wraps around."""
    hsv = tf.stack([tf.math.floormod(hue, 1.0), sat, val], axis=-1)
    return tf.image.hsv_to_rgb(hsv) * 255.0


def _shape_masks(u: tf.Tensor, v: tf.Tensor, orientation: tf.Tensor) -> list[tf.Tensor]:
    """Masks of every class for normalised coordinates.

    ``u`` [K, 1, S] and ``v`` [K, S, 1] are pixel-centre coordinates relative to each object's box, scaled so the
    box is [-1, 1]^2.  Returns one [K, S, S] bool mask per class, in the order of ``SHAPES_CLASSES``.
    """
    au, av = tf.abs(u), tf.abs(v)
    inside_box = (au <= 1.0) & (av <= 1.0)
    radius_sq = u * u + v * v
    circle = radius_sq <= 1.0
    square = inside_box
    # Triangle with its apex in the middle of one side of the box and its base on the opposite side; the
    # orientation (0..3) rotates it by multiples of 90 degrees, which keeps it tight in its box.
    o = orientation[:, None, None]
    along = tf.where(o == 0, v, tf.where(o == 1, -v, tf.where(o == 2, u, -u)))
    across = tf.where(o < 2, au, av)
    depth = (along + 1.0) / 2.0  # 0 at the apex side, 1 at the base side
    triangle = inside_box & (across <= depth)
    ring = circle & (radius_sq >= _RING_INNER_RADIUS**2)
    cross = inside_box & ((au <= _CROSS_HALF_ARM) | (av <= _CROSS_HALF_ARM))
    diamond = au + av <= 1.0
    return [circle, square, triangle, ring, cross, diamond]


def _background(seed: tf.Tensor, size: int, y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Textured background [S, S, 3] float32 (not clipped): gradient + stripes + colour blobs.

    ``y`` [S, 1] and ``x`` [1, S] are pixel-centre coordinates in relative units.
    """
    two = _uniform(seed, 0, [2, 3])
    colours = _hsv_colour(two[:, 0], two[:, 1] * 0.6, 0.15 + 0.8 * two[:, 2])  # [2, 3]
    angle = _uniform(seed, 1, [], 0.0, 2.0 * math.pi)
    proj = (x - 0.5) * tf.cos(angle) + (y - 0.5) * tf.sin(angle)
    t = (proj / math.sqrt(0.5) + 1.0) / 2.0  # in [0, 1] over the image
    image = colours[0] + (colours[1] - colours[0]) * t[..., None]

    stripe = _uniform(seed, 2, [6])
    stripe_on = tf.cast(stripe[0] < 0.6, tf.float32)
    amplitude = stripe_on * 45.0 * stripe[1]
    freq = 2.0 + 12.0 * stripe[2]
    theta = 2.0 * math.pi * stripe[3]
    phase = 2.0 * math.pi * stripe[4]
    wave = tf.sin(2.0 * math.pi * freq * (x * tf.cos(theta) + y * tf.sin(theta)) + phase)
    tint = tf.nn.l2_normalize(_uniform(seed, 3, [3], 0.2, 1.0)) * math.sqrt(3.0)
    image += amplitude * wave[..., None] * tint

    blob_cells = _randint(seed, 4, [], 3, 9)
    blobs = tf.random.stateless_uniform(tf.stack([blob_cells, blob_cells, 3]), _key(seed, 5), minval=-1.0, maxval=1.0)
    blobs = tf.image.resize(blobs, [size, size], method="bilinear")
    image += 50.0 * stripe[5] * blobs
    return image


def _distractor_lines(seed: tf.Tensor, size: int, y: tf.Tensor, x: tf.Tensor):
    """Unlabelled thin line segments: returns (mask [L, S, S] bool, colours [L, 3]).

    ``y`` [S, 1] and ``x`` [1, S] are pixel-centre coordinates in relative units; the distance to the line and the
    position along the segment are affine in (x, y), so they are built from separable terms.
    """
    count = _randint(seed, 0, [], 0, _MAX_DISTRACTOR_LINES + 1)
    ends = _uniform(seed, 1, [_MAX_DISTRACTOR_LINES, 4])  # x0, y0, x1, y1 in relative units
    half_width = (0.6 + 0.8 * _uniform(seed, 2, [_MAX_DISTRACTOR_LINES])) / size
    x0, y0 = ends[:, 0, None, None], ends[:, 1, None, None]
    dx, dy = ends[:, 2, None, None] - x0, ends[:, 3, None, None] - y0
    length = tf.maximum(tf.sqrt(dx * dx + dy * dy), 1e-3)
    along = ((x[None] - x0) * dx + (y[None] - y0) * dy) / (length * length)  # 0 .. 1 on the segment
    across = ((x[None] - x0) * dy - (y[None] - y0) * dx) / length  # signed distance to the line
    active = tf.range(_MAX_DISTRACTOR_LINES) < count
    mask = (tf.abs(across) <= half_width[:, None, None]) & (along >= 0.0) & (along <= 1.0) & active[:, None, None]
    col = _uniform(seed, 3, [_MAX_DISTRACTOR_LINES, 3])
    colours = _hsv_colour(col[:, 0], col[:, 1], 0.2 + 0.8 * col[:, 2])
    return mask, colours


def render_shapes(
    seed: tf.Tensor,
    image_size: int,
    num_classes: int = len(SHAPES_CLASSES),
    max_objects: int = 6,
    min_visible: float = 0.4,
) -> dict[str, tf.Tensor]:
    """Renders one image from a stateless seed ``[2]`` and returns the example plus drawing internals.

    Returns a dict with ``image`` [S, S, 3] uint8, ``boxes`` [n, 4] rel_xyxy, ``labels`` [n] int32 (kept objects in
    drawing order) and, for inspection and tests, ``object_masks`` [K, S, S] bool (full shape of every slot,
    all-false for unused slots), ``owner`` [S, S] int32 (index + 1 of the object visible at each pixel, 0 for
    background), ``kept`` [K] bool and ``visible_fraction`` [K] float32.
    """
    size, k_max = int(image_size), int(max_objects)
    seed = tf.convert_to_tensor(seed, tf.int64)
    centres = (tf.range(size, dtype=tf.float32) + 0.5) / size
    y, x = centres[:, None], centres[None, :]  # separable pixel-centre grids, broadcast to [S, S] when combined

    # --- objects: count, class, size, position (snapped to whole pixels), appearance.
    obj = _key(seed, 10)
    count = _randint(obj, 0, [], 1, k_max + 1)
    labels = _randint(obj, 1, [k_max], 0, num_classes)
    log_side = _uniform(obj, 2, [k_max], math.log(_MIN_SIDE), math.log(_MAX_SIDE))
    log_aspect = _uniform(obj, 3, [k_max], -_MAX_LOG_ASPECT, _MAX_LOG_ASPECT)
    side = tf.exp(log_side)
    wh = tf.stack([side * tf.exp(log_aspect / 2.0), side * tf.exp(-log_aspect / 2.0)], axis=-1)
    wh_px = tf.clip_by_value(tf.round(wh * size), 4.0, float(size))
    corner_px = tf.floor(_uniform(obj, 4, [k_max, 2]) * (size - wh_px + 1.0))
    boxes_px = tf.concat([corner_px, corner_px + wh_px], axis=-1)  # x0, y0, x1, y1 in pixels
    boxes = boxes_px / float(size)
    orientation = _randint(obj, 5, [k_max], 0, 4)

    half = wh_px / 2.0
    centre = corner_px + half
    u = ((x * size)[None] - centre[:, 0, None, None]) / half[:, 0, None, None]  # [K, 1, S]
    v = ((y * size)[None] - centre[:, 1, None, None]) / half[:, 1, None, None]  # [K, S, 1]
    per_class = _shape_masks(u, v, orientation)
    label_grid = labels[:, None, None]
    masks = per_class[0]
    for cls in range(1, len(per_class)):  # static: one select per class
        masks = tf.where(label_grid == cls, per_class[cls], masks)
    active = tf.range(k_max) < count
    masks = masks & active[:, None, None]  # [K, S, S]

    # Per-class hue families that overlap: colour narrows the class down to several candidates, never to one.
    look = _uniform(obj, 6, [k_max, 6])
    family_centre = tf.cast(labels, tf.float32) / float(num_classes)
    hue = family_centre + _HUE_FAMILY_HALF_WIDTH * (2.0 * look[:, 0] - 1.0)
    base = _hsv_colour(hue, 0.45 + 0.55 * look[:, 1], 0.35 + 0.65 * look[:, 2])  # [K, 3]
    # Linear shading 1 + g (u cos a + v sin a) / 2, written as an affine function of pixel coordinates so it can
    # be evaluated only for the object that owns each pixel.
    gain = 0.35 * look[:, 4] / 2.0
    cos_a, sin_a = tf.cos(2.0 * math.pi * look[:, 3]), tf.sin(2.0 * math.pi * look[:, 3])
    slope_x, slope_y = gain * cos_a / half[:, 0], gain * sin_a / half[:, 1]
    offset = 1.0 - slope_x * centre[:, 0] - slope_y * centre[:, 1]
    texture_sigma = 15.0 * look[:, 5]
    params = tf.concat([base, tf.stack([offset, slope_x, slope_y, texture_sigma], axis=-1)], axis=-1)
    params = tf.concat([tf.zeros([1, 7]), params], axis=0)  # row 0 = background (unused)

    # --- composite: background, then distractor lines, then objects in order (later ones on top).
    image = _background(_key(seed, 20), size, y, x)
    line_masks, line_colours = _distractor_lines(_key(seed, 30), size, y, x)
    for line in range(_MAX_DISTRACTOR_LINES):  # static, at most 3 iterations
        image = tf.where(line_masks[line][..., None], line_colours[line], image)
    depth = tf.reduce_max(tf.where(masks, tf.range(1, k_max + 1)[:, None, None], 0), axis=0)  # owner index + 1
    owner_params = tf.gather(params, depth)  # [S, S, 7]
    texture = tf.random.stateless_normal([size, size, 1], _key(obj, 7))
    shade = (
        owner_params[..., 3:4]
        + owner_params[..., 4:5] * (x * size)[..., None]
        + owner_params[..., 5:6] * (y * size)[..., None]
    )
    object_rgb = owner_params[..., 0:3] * shade + owner_params[..., 6:7] * texture
    image = tf.where(depth[..., None] > 0, object_rgb, image)

    noise_sigma = _uniform(seed, 40, [], 1.0, 10.0)
    image += tf.random.stateless_normal([size, size, 3], _key(seed, 41)) * noise_sigma
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)

    # --- annotations: keep an object only if enough of it is still visible.
    area = tf.reduce_sum(tf.cast(masks, tf.float32), axis=[1, 2])
    visible = tf.reduce_sum(tf.cast(depth[None] == tf.range(1, k_max + 1)[:, None, None], tf.float32), axis=[1, 2])
    visible_fraction = tf.math.divide_no_nan(visible, area)
    kept = active & (area > 0) & (visible_fraction >= min_visible)
    return {
        "image": image,
        "boxes": tf.boolean_mask(boxes, kept),
        "labels": tf.boolean_mask(labels, kept),
        "object_masks": masks,
        "owner": depth,
        "kept": kept,
        "visible_fraction": visible_fraction,
    }


def _example_seed(seed: int, index: tf.Tensor) -> tf.Tensor:
    base = tf.constant([seed, 0x5A4E5], dtype=tf.int64)  # second word only separates this dataset's streams
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def shapes_example(
    index: tf.Tensor,
    image_size: int,
    seed: int,
    num_classes: int = len(SHAPES_CLASSES),
    max_objects: int = 6,
    min_visible: float = 0.4,
) -> dict[str, tf.Tensor]:
    """Example ``index`` of the dataset in the package's example contract (see ``shapes_dataset``)."""
    drawn = render_shapes(_example_seed(seed, index), image_size, num_classes, max_objects, min_visible)
    n = tf.shape(drawn["labels"])[0]
    return {
        "image": drawn["image"],
        "boxes": drawn["boxes"],
        "labels": drawn["labels"],
        "difficult": tf.zeros([n], tf.bool),
        "image_id": tf.strings.join(["shapes_", tf.strings.as_string(seed), "_", tf.strings.as_string(index)]),
        "original_size": tf.constant([image_size, image_size], tf.int32),
    }


def _check_arguments(num_images: int, image_size: int, num_classes: int, max_objects: int, min_visible: float):
    if num_images < 0:
        raise ValueError(f"shapes_dataset: num_images must be >= 0, got {num_images}.")
    if image_size < 16:
        raise ValueError(f"shapes_dataset: image_size must be >= 16 pixels (objects need >= 4 px), got {image_size}.")
    if not 1 <= num_classes <= len(SHAPES_CLASSES):
        raise ValueError(
            f"shapes_dataset: num_classes must be in [1, {len(SHAPES_CLASSES)}] (the classes are "
            f"{SHAPES_CLASSES}), got {num_classes}."
        )
    if max_objects < 1:
        raise ValueError(f"shapes_dataset: max_objects must be >= 1, got {max_objects}.")
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"shapes_dataset: min_visible is a fraction in [0, 1], got {min_visible}.")


def shapes_dataset(
    num_images: int,
    image_size: int = 96,
    seed: int = 0,
    num_classes: int = len(SHAPES_CLASSES),
    max_objects: int = 6,
    *,
    min_visible: float = 0.4,
    num_parallel_calls: int | None = tf.data.AUTOTUNE,
) -> tf.data.Dataset:
    """The synthetic dataset as an unbatched ``tf.data.Dataset`` in the package's example contract.

    Each element is ``{"image": uint8 [S, S, 3], "boxes": float32 [n, 4] rel_xyxy, "labels": int32 [n] (0-based,
    index into ``SHAPES_CLASSES``), "difficult": bool [n] (all False), "image_id": string "shapes_<seed>_<i>",
    "original_size": int32 [2] = (S, S)}`` with ``1 <= n <= max_objects``.  The classes are
    ``SHAPES_CLASSES[:num_classes]``.  Element ``i`` is a pure function of ``(seed, i)`` (and the arguments), so two
    datasets with the same seed are identical and datasets with different seeds are independent.
    """
    _check_arguments(num_images, image_size, num_classes, max_objects, min_visible)

    def make(index):
        return shapes_example(index, image_size, seed, num_classes, max_objects, min_visible)

    return tf.data.Dataset.range(num_images).map(make, num_parallel_calls=num_parallel_calls, deterministic=True)
