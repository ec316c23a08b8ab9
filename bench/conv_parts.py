"""What a per-image convolution costs against the SSD's batched one, part by part, at SSD300's shapes.

RobustDet mixes a kernel per image, so every AAconv is a grouped convolution (batch folded into the channels, one
group per image: ``aaconv.fold``) where the SSD runs one dense convolution over the batch.  This times both, side by
side in one process, for the three parts of a training step (forward, input gradient, weight gradient), and one
alternative for the weight gradient: im2col by nine shifted slices and a batched GEMM per tap (``gemm_taps``), the
lever issue 27's first session left untried.  Ratios are per-image ÷ dense: the floor the convolutions alone put under
``bench/train_step.py``'s ratios on this backend.

It prints ONE JSON line: per shape the seconds of each variant (median of ``--repeats`` after two warm-ups), the
ratios, and the largest relative difference of the GEMM weight gradient from the grouped one.

    python bench/conv_parts.py [--batch 6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

SHAPES = ((150, 128), (75, 256), (38, 512), (19, 512))
"""(side, channels) of SSD300's conv2_x, conv3_x, conv4_x and conv5_x (3×3, stride 1, same channels in and out)."""
STRIDES = [1, 1, 1, 1]


def seconds(fn, *args, repeats: int) -> float:
    fn(*args)
    fn(*args)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn(*args).numpy()
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def gemm_taps(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """Per-image weight gradient ``[B, 3, 3, C, O]`` of a 3×3 'SAME' convolution: for each tap, the shifted input
    slice times the output gradient, one batched GEMM over the images."""
    batch, side, _, channels = x.shape
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    grad = tf.reshape(dy, [batch, side * side, -1])
    taps = [tf.matmul(tf.reshape(padded[:, i:i + side, j:j + side, :], [batch, side * side, channels]), grad,
                      transpose_a=True) for i in range(3) for j in range(3)]
    return tf.reshape(tf.stack(taps, 1), [batch, 3, 3, channels, -1])


def one_shape(batch: int, side: int, channels: int, repeats: int) -> dict:
    rng = tf.random.Generator.from_seed(0)
    x = rng.normal([batch, side, side, channels])
    dy = rng.normal([batch, side, side, channels])
    kernel = rng.normal([3, 3, channels, channels]) * 0.01
    kernels = rng.normal([3, 3, channels, batch * channels]) * 0.01  # one kernel per image, as aaconv.fold has them
    folded_x = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, side, side, batch * channels])
    folded_dy = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [1, side, side, batch * channels])

    forward = tf.function(lambda x, w: tf.nn.conv2d(x, w, STRIDES, "SAME"))

    def input_grad(input_shape):
        return tf.function(lambda dy, w: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=input_shape, filter=w, out_backprop=dy, strides=STRIDES, padding="SAME"))

    def weight_grad(outputs):
        return tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[3, 3, channels, outputs], out_backprop=dy, strides=STRIDES, padding="SAME"))

    grouped_weights = weight_grad(batch * channels)
    out = {
        "dense_forward_s": seconds(forward, x, kernel, repeats=repeats),
        "per_image_forward_s": seconds(forward, folded_x, kernels, repeats=repeats),
        "dense_input_grad_s": seconds(input_grad(x.shape), dy, kernel, repeats=repeats),
        "per_image_input_grad_s": seconds(input_grad(folded_x.shape), folded_dy, kernels,
                                          repeats=repeats),
        "dense_weight_grad_s": seconds(weight_grad(channels), x, dy, repeats=repeats),
        "per_image_weight_grad_s": seconds(grouped_weights, folded_x, folded_dy, repeats=repeats),
        "gemm_taps_weight_grad_s": seconds(tf.function(gemm_taps), x, dy, repeats=repeats),
    }
    grouped = tf.transpose(tf.reshape(grouped_weights(folded_x, folded_dy), [3, 3, channels, batch, channels]),
                           [3, 0, 1, 2, 4])
    out["gemm_taps_max_relative_difference"] = float(tf.reduce_max(tf.abs(grouped - gemm_taps(x, dy)))
                                                     / tf.reduce_max(tf.abs(grouped)))
    for part in ("forward", "input_grad", "weight_grad"):
        out[f"{part}_per_image_over_dense"] = out[f"per_image_{part}_s"] / out[f"dense_{part}_s"]
    out["gemm_taps_over_per_image_weight_grad"] = out["gemm_taps_weight_grad_s"] / out["per_image_weight_grad_s"]
    return {k: round(v, 4) if k.endswith("_s") or "over" in k else v for k, v in out.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=6, help="images (bench/train_step.py's 3B at B = 2)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    record = {"bench": "conv_parts", "batch": args.batch, "repeats": args.repeats,
              "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
              "shapes": {f"{side}x{side}x{channels}": one_shape(args.batch, side, channels, args.repeats)
                         for side, channels in SHAPES}}
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
