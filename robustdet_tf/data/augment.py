"""The SSD training augmentation chain (docs/reference.md#augmentation) as TF ops on one example.

Why TF ops with stateless randomness: the chain runs inside ``tf.data`` parallel maps, and training must be
reproducible.  Every random draw comes from ``tf.random.stateless_*`` keyed by a per-example seed (shape [2]), so
an example's augmentation depends only on that seed, never on thread scheduling or on a global RNG.

Order (as in ssd.pytorch's ``SSDAugmentation``): photometric distortion -> expand -> random sample crop ->
mirror -> resize.  Boxes enter and leave in the package format ``rel_xyxy``; in between they are handled in
absolute pixels exactly as the reference does (integer paste offsets and crop rectangles), so boxes move with
the pixels.

``chain="reference"`` reproduces the reference including its quirks (docs/reference.md#augmentation):

* pixel values are never clipped, so they may leave [0, 255] after brightness/contrast/saturation; the HSV round
  trip (always run, as in the reference) is then not the identity for negative values, as in OpenCV;
* the crop's min-IoU constraint never rejects a candidate (the rejection test is
  ``overlap.min() < min_iou and max_iou < overlap.max()`` with ``max_iou = inf``);
* crop offsets follow NumPy's ``uniform(W - w)``, i.e. ``uniform(low=W - w, high=1.0)``.

``chain="corrected"`` is the corrected chain: values clipped to [0, 255] after every photometric step (and the
saturation to [0, 1]), a candidate crop is accepted only if some ground-truth box overlaps it with IoU >= the mode's
minimum (the original Caffe SSD rule), and offsets are uniform in [0, W - w].

Colour conventions.  The reference works on BGR images; here images are RGB.  Brightness, contrast, saturation and
hue act identically on either order, and the channel-permutation noise draws uniformly from all six permutations, so
the distribution is the same.  HSV follows OpenCV's float conversion (H in degrees [0, 360), S = range / (|V| + eps),
V in pixel units); ``tf.image.rgb_to_hsv`` agrees with it (with H / 360) for values in [0, 255] but not for the
negative values the reference chain can produce.  The expand canvas is filled with the reference's mean
(104, 117, 123) given in B, G, R order, i.e. ``EXPAND_FILL_RGB = (123, 117, 104)`` in R, G, B.  Note that the
model subtracts (104, 117, 123) from R, G, B (docs/reference.md#preprocessing), so the fill does not become zero at the
network input; this
is the reference's behaviour and is kept in both modes.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from robustdet_tf.behaviour import REFERENCE, checked
from robustdet_tf.data.photometric import photometric_distort
from robustdet_tf.data.random_draws import as_seed, coin, key, uniform

EXPAND_FILL_RGB: tuple[float, float, float] = (123.0, 117.0, 104.0)

# RandomSampleCrop modes in the reference's order: index 0 = keep the whole image; then minimum IoUs; the last
# mode (-inf) is unconstrained.
CROP_MIN_IOUS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.7, 0.9, float("-inf"))

# ------------------------------------------------------------------------------------------------ geometric
#
# Each geometric step is split into "draw the parameters" (from the seed and the current image size only) and
# "apply them".  The public step functions apply them to materialised images, as the reference does.  The chain
# ``ssd_augment`` draws the same parameters and then renders expand + crop + mirror + resize in one pass that
# computes only the output pixels (``_render_view``), so it never builds the up-to-16x larger expand canvas.


def _image_size(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return shape[0], shape[1]


def _scale(width: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.stack([width, height, width, height]), tf.float32)


def _draw_expand(seed: tf.Tensor, height, width, probability: float, max_ratio: float):
    """Reference ``Expand`` parameters: (canvas_h, canvas_w, top, left) as int32 scalars."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ratio = tf.where(coin(seed, 0, probability), uniform(seed, 1, low=1.0, high=max_ratio), 1.0)
    canvas_h = tf.cast(tf.floor(h * ratio), tf.int32)
    canvas_w = tf.cast(tf.floor(w * ratio), tf.int32)
    left = tf.cast(tf.floor(uniform(seed, 2) * (w * ratio - w)), tf.int32)
    top = tf.cast(tf.floor(uniform(seed, 3) * (h * ratio - h)), tf.int32)
    # Guard against float rounding pushing the image past the canvas edge.
    return canvas_h, canvas_w, tf.minimum(top, canvas_h - height), tf.minimum(left, canvas_w - width)


def _expand_boxes(boxes, height, width, canvas_h, canvas_w, top, left) -> tf.Tensor:
    """rel_xyxy boxes of the image -> rel_xyxy boxes of the canvas (integer paste offset, as the reference)."""
    offset = tf.cast(tf.stack([left, top, left, top]), tf.float32)
    return (boxes * _scale(width, height) + offset) / _scale(canvas_w, canvas_h)


def _paste(image: tf.Tensor, paddings, fill: Sequence[float]) -> tf.Tensor:
    """Pad ``image`` with the per-channel ``fill`` colour (exact: every output value is one of the two terms)."""
    height, width = _image_size(image)
    outside = tf.pad(tf.zeros([height, width, 1]), paddings, constant_values=1.0)
    return tf.pad(image, paddings) + outside * tf.constant(fill, tf.float32)


def random_expand(
    image: tf.Tensor,
    boxes: tf.Tensor,
    seed,
    *,
    fill: Sequence[float] = EXPAND_FILL_RGB,
    probability: float = 0.5,
    max_ratio: float = 4.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Reference ``Expand``: paste the image on a ``fill``-coloured canvas ``ratio`` ~ U(1, 4) times larger.

    Canvas ``int(H r) x int(W r)``, top-left offset ``(int(U(0, W r - W)), int(U(0, H r - H)))``.  ``boxes`` are
    rel_xyxy of the input and come back rel_xyxy of the canvas.
    """
    seed = as_seed(seed)
    image = tf.cast(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    height, width = _image_size(image)
    canvas_h, canvas_w, top, left = _draw_expand(seed, height, width, probability, max_ratio)
    paddings = [[top, canvas_h - height - top], [left, canvas_w - width - left], [0, 0]]
    canvas = _paste(image, paddings, fill)
    return canvas, _expand_boxes(boxes, height, width, canvas_h, canvas_w, top, left)


def _box_iou_with_rects(boxes: tf.Tensor, rects: tf.Tensor) -> tf.Tensor:
    """IoU [T, n] between rects [T, 4] and boxes [n, 4] (absolute xyxy, areas without the +1 convention)."""
    lo = tf.maximum(rects[:, None, :2], boxes[None, :, :2])
    hi = tf.minimum(rects[:, None, 2:], boxes[None, :, 2:])
    inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), axis=-1)
    box_area = tf.reduce_prod(boxes[:, 2:] - boxes[:, :2], axis=-1)
    rect_area = tf.reduce_prod(rects[:, 2:] - rects[:, :2], axis=-1)
    return inter / (rect_area[:, None] + box_area[None, :] - inter)


def _crop_candidates(seed, width, height, boxes, min_iou, reference: bool, trials: int):
    """One round of the reference's 50-trial loop, vectorised: returns (rects [T, 4] int-valued float, valid [T],
    centre_inside [T, n]).  ``boxes`` are absolute xyxy."""
    draws = tf.random.stateless_uniform([4, trials], seed, dtype=tf.float32)
    crop_w = 0.3 * width + 0.7 * width * draws[0]  # NumPy uniform(0.3 W, W)
    crop_h = 0.3 * height + 0.7 * height * draws[1]
    aspect = crop_h / crop_w
    aspect_ok = (aspect >= 0.5) & (aspect <= 2.0)
    if reference:  # NumPy uniform(W - w) == uniform(low=W - w, high=1.0)
        left = (width - crop_w) + (1.0 - (width - crop_w)) * draws[2]
        top = (height - crop_h) + (1.0 - (height - crop_h)) * draws[3]
    else:
        left = (width - crop_w) * draws[2]
        top = (height - crop_h) * draws[3]
    rects = tf.floor(tf.stack([left, top, left + crop_w, top + crop_h], axis=-1))
    rects = tf.minimum(rects, tf.stack([width, height, width, height]))

    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    centre_inside = (
        (rects[:, None, 0] < centres[None, :, 0])
        & (rects[:, None, 1] < centres[None, :, 1])
        & (rects[:, None, 2] > centres[None, :, 0])
        & (rects[:, None, 3] > centres[None, :, 1])
    )
    valid = aspect_ok & tf.reduce_any(centre_inside, axis=1)
    if not reference:
        best_iou = tf.reduce_max(_box_iou_with_rects(boxes, rects), axis=1)  # -inf when there are no boxes
        valid &= best_iou >= min_iou
    return rects, valid, centre_inside


def _draw_crop(seed: tf.Tensor, height, width, abs_boxes, reference: bool, max_trials: int, max_rounds: int):
    """Reference ``RandomSampleCrop`` parameters: (rect [4] float x0, y0, x1, y1 whole pixels, keep [n] bool)."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    whole_rect = tf.stack([0.0, 0.0, w, h])
    keep_all = tf.ones(tf.shape(abs_boxes)[:1], dtype=tf.bool)
    min_ious = tf.constant(CROP_MIN_IOUS, tf.float32)

    def keep_going(round_index, done, rect, keep):
        del rect, keep
        return tf.logical_not(done) & (round_index < max_rounds)

    def one_round(round_index, done, rect, keep):
        del done, rect, keep
        round_seed = key(seed, round_index)
        mode = tf.random.stateless_uniform([], key(round_seed, 0), minval=0, maxval=6, dtype=tf.int32)
        rects, valid, centre_inside = _crop_candidates(
            key(round_seed, 1), w, h, abs_boxes, tf.gather(min_ious, mode), reference, max_trials
        )
        first = tf.argmax(tf.cast(valid, tf.int32), output_type=tf.int32)
        use_whole = tf.equal(mode, 0)
        found = tf.reduce_any(valid) & tf.logical_not(use_whole)
        new_rect = tf.where(found, rects[first], whole_rect)
        new_keep = tf.where(found, centre_inside[first], keep_all)
        return round_index + 1, use_whole | found, new_rect, new_keep

    _, _, rect, keep = tf.while_loop(
        keep_going, one_round, (tf.constant(0), tf.constant(False), whole_rect, keep_all), parallel_iterations=1
    )
    return rect, keep


def _crop_boxes(abs_boxes: tf.Tensor, labels: tf.Tensor, rect: tf.Tensor, keep: tf.Tensor):
    """Kept boxes clipped to ``rect``, shifted, and made relative to it; labels follow."""
    kept = tf.boolean_mask(abs_boxes, keep)
    kept = tf.concat([tf.maximum(kept[:, :2], rect[:2]), tf.minimum(kept[:, 2:], rect[2:])], axis=-1)
    kept = (kept - tf.tile(rect[:2], [2])) / tf.tile(rect[2:] - rect[:2], [2])
    return kept, tf.boolean_mask(labels, keep)


def random_sample_crop(
    image: tf.Tensor,
    boxes: tf.Tensor,
    labels: tf.Tensor,
    seed,
    *,
    chain: str = REFERENCE,
    max_trials: int = 50,
    max_rounds: int = 100,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Reference ``RandomSampleCrop``.

    Loop over rounds: draw one of six modes (keep the whole image, min IoU 0.1 / 0.3 / 0.7 / 0.9, unconstrained);
    evaluate ``max_trials`` candidate rectangles at once and take the first valid one (aspect ratio h / w in
    [0.5, 2], at least one box centre strictly inside, and in corrected mode the IoU rule).  If none is valid, draw
    a new mode.  Kept boxes (centre inside) are clipped to the rectangle and shifted; their labels follow.  The
    reference loops forever; after ``max_rounds`` failed rounds (probability < 1e-7 for 100) the image is kept
    whole, which is what the "whole image" mode returns anyway.  An example without boxes is returned unchanged.
    In the whole-image case boxes are clipped to the image (a no-op for valid boxes; the reference does not clip).
    """
    seed = as_seed(seed)
    image = tf.cast(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    height, width = _image_size(image)
    abs_boxes = boxes * _scale(width, height)
    rect, keep = _draw_crop(seed, height, width, abs_boxes, checked("chain", chain) == REFERENCE, max_trials,
                            max_rounds)
    rect_i = tf.cast(rect, tf.int32)
    cropped = image[rect_i[1] : rect_i[3], rect_i[0] : rect_i[2], :]
    boxes, labels = _crop_boxes(abs_boxes, tf.convert_to_tensor(labels), rect, keep)
    return cropped, boxes, labels


def _mirror_boxes(boxes: tf.Tensor) -> tf.Tensor:
    return tf.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=-1)


def random_mirror(image: tf.Tensor, boxes: tf.Tensor, seed, *, probability: float = 0.5) -> tuple[tf.Tensor, tf.Tensor]:
    """Reference ``RandomMirror``: horizontal flip with x1' = 1 - x2, x2' = 1 - x1 (relative coordinates)."""
    flip = coin(as_seed(seed), 0, probability)
    image = tf.convert_to_tensor(image)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    return tf.where(flip, tf.reverse(image, axis=[1]), image), tf.where(flip, _mirror_boxes(boxes), boxes)


def _size_pair(image_size) -> list[int]:
    if isinstance(image_size, int):
        return [image_size, image_size]
    size = [int(s) for s in image_size]
    if len(size) != 2:
        raise ValueError(f"augment: image_size must be an int or (height, width), got {image_size!r}.")
    return size


def resize_image(image: tf.Tensor, image_size) -> tf.Tensor:
    """Bilinear, half-pixel centres, no antialiasing (docs/reference.md#preprocessing); float32 [S, S, 3] (or [h, w, 3]
    for a pair)."""
    return tf.image.resize(tf.cast(image, tf.float32), _size_pair(image_size), method="bilinear", antialias=False)


def _axis_taps(out_size: int, start, length, flip, paste_offset, source_size):
    """Sampling taps along one axis for ``_render_view``.

    Reproduces the ResizeBilinear kernel with half-pixel centres (what ``tf.image.resize`` runs): output ``i`` reads
    ``p = (i + 0.5) * length / out_size - 0.5`` of the crop, taps ``max(floor p, 0)`` and ``min(ceil p, length - 1)``
    with weight ``p - floor p``.  The crop is mirrored if ``flip``; crop index -> canvas index ``start + i`` ->
    source index ``canvas - paste_offset``, shifted by one into a source padded with a one-pixel fill border.
    """
    scale = tf.cast(length, tf.float32) / float(out_size)
    pos = (tf.range(out_size, dtype=tf.float32) + 0.5) * scale - 0.5
    floor = tf.floor(pos)
    lerp = pos - floor
    low = tf.maximum(tf.cast(floor, tf.int32), 0)
    high = tf.minimum(tf.cast(tf.math.ceil(pos), tf.int32), length - 1)
    low, high = tf.where(flip, length - 1 - low, low), tf.where(flip, length - 1 - high, high)

    def to_source(index):
        return tf.clip_by_value(index + start - paste_offset + 1, 0, source_size + 1)

    return to_source(low), to_source(high), lerp


def _render_view(image, top, left, rect, flip, image_size, fill) -> tf.Tensor:
    """Output of expand (paste at ``top``, ``left`` on a fill canvas) -> crop ``rect`` -> optional mirror -> resize,
    computed directly from the source image: equal to materialising each step (up to float rounding)."""
    out_h, out_w = _size_pair(image_size)
    height, width = _image_size(image)
    rect = tf.cast(rect, tf.int32)
    bordered = _paste(image, [[1, 1], [1, 1], [0, 0]], fill)
    rows_lo, rows_hi, y_lerp = _axis_taps(out_h, rect[1], rect[3] - rect[1], False, top, height)
    cols_lo, cols_hi, x_lerp = _axis_taps(out_w, rect[0], rect[2] - rect[0], flip, left, width)
    upper, lower = tf.gather(bordered, rows_lo), tf.gather(bordered, rows_hi)
    x_lerp = x_lerp[None, :, None]
    top_row = tf.gather(upper, cols_lo, axis=1)
    top_row += (tf.gather(upper, cols_hi, axis=1) - top_row) * x_lerp
    bottom_row = tf.gather(lower, cols_lo, axis=1)
    bottom_row += (tf.gather(lower, cols_hi, axis=1) - bottom_row) * x_lerp
    return top_row + (bottom_row - top_row) * y_lerp[:, None, None]


def ssd_augment(
    image: tf.Tensor,
    boxes: tf.Tensor,
    labels: tf.Tensor,
    seed,
    image_size,
    *,
    chain: str = REFERENCE,
    photometric: bool = True,
    expand: bool = True,
    crop: bool = True,
    mirror: bool = True,
    fill: Sequence[float] = EXPAND_FILL_RGB,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The whole reference chain on one example.

    Draws exactly the parameters the step functions draw (same seeds), so the result equals
    ``resize_image(random_mirror(random_sample_crop(random_expand(photometric_distort(...)))))`` with the sub-seeds
    used below, but renders the geometric steps in one pass over the output pixels.

    Args:
      image: [H, W, 3] RGB, uint8 or float in [0, 255].
      boxes: [n, 4] float32 rel_xyxy.
      labels: [n] int labels (returned for the boxes that survive the crop).
      seed: stateless seed [2]; the result is a pure function of the inputs and the seed.
      image_size: output size (int or (height, width)).
      chain: ``"reference"`` (the reference's quirks, see the module docstring) or ``"corrected"``.
      photometric, expand, crop, mirror: switch steps off (tests, ablations).
    Returns:
      (image float32 [S, S, 3] in pixel space, boxes [m, 4] rel_xyxy, labels [m]).
    """
    seed = as_seed(seed)
    image = tf.cast(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    labels = tf.convert_to_tensor(labels)
    reference = checked("chain", chain) == REFERENCE
    if photometric:
        image = photometric_distort(image, key(seed, 1), chain=chain)
    height, width = _image_size(image)
    canvas_h, canvas_w, top, left = height, width, tf.constant(0), tf.constant(0)
    if expand:
        canvas_h, canvas_w, top, left = _draw_expand(key(seed, 2), height, width, 0.5, 4.0)
        boxes = _expand_boxes(boxes, height, width, canvas_h, canvas_w, top, left)
    rect = tf.cast(tf.stack([0, 0, canvas_w, canvas_h]), tf.float32)
    if crop:
        abs_boxes = boxes * _scale(canvas_w, canvas_h)
        rect, keep = _draw_crop(key(seed, 3), canvas_h, canvas_w, abs_boxes, reference, 50, 100)
        boxes, labels = _crop_boxes(abs_boxes, labels, rect, keep)
    flip = tf.constant(False)
    if mirror:
        flip = coin(key(seed, 4), 0)
        boxes = tf.where(flip, _mirror_boxes(boxes), boxes)
    out_h, out_w = _size_pair(image_size)
    rendered = _render_view(image, top, left, rect, flip, (out_h, out_w), fill)
    return tf.ensure_shape(rendered, [out_h, out_w, 3]), boxes, labels
