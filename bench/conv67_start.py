"""How should conv6/conv7 start when the ImageNet file has no fc layers?  A measurement over seeds.

Issue 28 saw, on aerial photos (one run each), 12.1 % test AP with conv6/conv7 from subsampled *random* fc1/fc2 and
3.1 % from the layers' own initialiser, with the trunk from ImageNet.  Two explanations: the scale of the start (the
layers' Glorot initialiser draws conv6/conv7 with a larger variance than subsampled fc layers or than the framework
the reference runs on) or chance.  Neither ImageNet weights nor real photos exist on this machine, so the question is
asked of a surrogate with the same structure: a *source* SSD trained on the demo's shapes (its 13 trunk convolutions
stand for the ImageNet trunk) starts a *target* SSD that is trained on other images of that kind (fewer, as own data
is) with SGD as the VOC configs train, conv6/conv7 started four ways:

* ``initialiser``: the layers' own Glorot-uniform kernels and zero biases (the default before this measurement);
* ``torch_default``: PyTorch's default for a fresh convolution, U(±1/√fan_in) for kernel and bias
  (``backbone.default_conv67``, the default this measurement chose; what the reference,
  which runs on PyTorch, would give a convolution it has no weights for): a third of the LeCun variance;
* ``fc_subsampled``: Keras' Glorot-uniform fc1/fc2 of the VGG16 classifier at this width, subsampled as the reduced-fc
  file is (the issue's better arm);
* ``source``: the source's own trained conv6/conv7 (the case of a file *with* fc layers).

Every arm of one seed has the same other initial weights and data order (the seed names them); the arms differ only
in conv6/conv7.  It prints ONE JSON line: per arm and seed the clean mAP (VOC07, the demo's evaluation images) with
its 95 % bootstrap interval, the paired differences against ``initialiser`` with their intervals, the mean and
standard deviation over seeds, and the scale of the start (standard deviation of the conv5_3 and conv7 activations
and of the conv6/conv7 kernels before training).

``--trunk-scale`` multiplies every trunk activation (``scaled_trunk``): the surrogate's conv5_3 features are far
smaller than an ImageNet VGG16's, and the scale of conv6/conv7's input is what the two explanations turn on.

    python bench/conv67_start.py [--ssd /tmp/demo/ssd] [--seeds 0 1 2] [--steps 500] [--trunk-scale 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from configs import demo as demo_config  # noqa: E402
from robustdet_tf import demo  # noqa: E402
from robustdet_tf import initial_model as starts  # noqa: E402
from robustdet_tf import train as train_lib  # noqa: E402
from robustdet_tf.checkpoints import integrity  # noqa: E402
from robustdet_tf.data.sources import load_source  # noqa: E402
from robustdet_tf.evaluation.from_config import eval_batches, evaluate_models  # noqa: E402
from robustdet_tf.importers import backbone  # noqa: E402
from robustdet_tf.models.factory import build_model  # noqa: E402

ARMS = ("initialiser", "torch_default", "fc_subsampled", "source")
TRUNK_13 = tuple(backbone.KERAS_CONVS.values())


def fc_subsampled(conv5_channels: int, fc_units: int, rng: np.random.Generator) -> backbone.TrunkArrays:
    """Keras' Glorot-uniform fc1 ``[7·7·c5, 4·c6]`` and fc2 ``[4·c6, 4·c7]`` with zero biases, reduced as the
    reduced-fc file is (every 3rd tap, every 4th unit)."""
    def glorot(fan_in, fan_out):
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, (fan_in, fan_out)).astype(np.float32)
    fc6 = glorot(49 * conv5_channels, 4 * fc_units)
    fc7 = glorot(4 * fc_units, 4 * fc_units)
    return backbone.reduced_fc(fc6, np.zeros(4 * fc_units, np.float32), fc7, np.zeros(4 * fc_units, np.float32))


def scaled_trunk(arrays: backbone.TrunkArrays, scale: float) -> backbone.TrunkArrays:
    """The same ReLU trunk with every activation ``scale`` times larger: the first convolution's kernel and bias and
    every later bias times ``scale`` (ReLU networks are positively homogeneous).  The surrogate trunk's features are
    presumably far smaller than an ImageNet VGG16's on pixels minus the mean (not measurable here); this puts
    conv6/conv7's input on another scale while the function is unchanged up to that factor (conv4_3's source is
    L2-normalised, so only the conv7 path and what follows see it)."""
    out = {}
    for index, (name, (kernel, bias)) in enumerate(arrays.items()):
        out[name] = (kernel * scale if index == 0 else kernel, bias * scale)
    return out


def started(config, source_model, arm: str, seed: int, trunk_scale: float = 1.0):
    """A fresh target model of ``config`` (weights drawn from ``seed``) with the source's 13 trunk convolutions
    (``scaled_trunk`` by ``trunk_scale``) and conv6/conv7 started as ``arm`` says."""
    starts.seed_run(config)
    model = build_model(config.model)
    model.build()
    convs, source_convs = model.detector.all_convs(), source_model.detector.all_convs()
    arrays = {name: (source_convs[name].kernel.numpy(), source_convs[name].bias.numpy()) for name in TRUNK_13}
    arrays = scaled_trunk(arrays, trunk_scale)
    rng = np.random.default_rng(1000 + seed)
    conv6 = convs[backbone.CONV6]
    if arm == "torch_default":  # the default for files without fc layers, as start_backbone draws it
        arrays.update(backbone.default_conv67(model))
    elif arm == "fc_subsampled":
        arrays.update(fc_subsampled(int(conv6.kernel.shape[2]), int(conv6.kernel.shape[3]), rng))
    elif arm == "source":
        for name in (backbone.CONV6, backbone.CONV7):  # the biases follow the trunk's scale (homogeneity)
            arrays[name] = (source_convs[name].kernel.numpy(), source_convs[name].bias.numpy() * trunk_scale)
    elif arm != "initialiser":
        raise ValueError(f"unknown arm {arm!r}; one of {ARMS}")
    return backbone.load_trunk(model, arrays, f"the source SSD ({arm})")


def start_scale(model, images: tf.Tensor) -> dict[str, float]:
    """Standard deviations at the start: conv5_3 and conv7 activations (after ReLU) and the conv6/conv7 kernels."""
    features = model.detector(model.preprocess(images), return_features=True)["features"]
    convs = model.detector.all_convs()
    return {"conv5_3_std": float(tf.math.reduce_std(features["vgg_29"])),
            "conv7_std": float(tf.math.reduce_std(features["vgg_34"])),
            "conv6_kernel_std": float(np.std(convs[backbone.CONV6].kernel.numpy())),
            "conv7_kernel_std": float(np.std(convs[backbone.CONV7].kernel.numpy()))}


def target_config(args, seed: int):
    """The demo's model on other shapes images (``--train-images``, data seed 7), SGD as the VOC configs train."""
    config = demo_config.get_config()
    with config.unlocked():
        config.data.train_images = int(args.train_images)
        config.data.train_seed = 7
        config.train.optimizer = "sgd"
        config.train.learning_rate = float(args.learning_rate)
        config.train.steps = int(args.steps)
        config.train.checkpoint_every = int(args.steps)
        config.train.log_every = max(1, int(args.steps) // 4)
        config.train.seed = int(seed)
        config.eval.attacks = ("clean",)
        config.eval.sample_images = 0
    return config


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 2), "std": round(float(np.std(values, ddof=1)), 2)
            if len(values) > 1 else None}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/conv67_start")
    parser.add_argument("--ssd", default="", help="a demo's clean-SSD folder (holds model.keras) as the source")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--train-images", type=int, default=400)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--trunk-scale", type=float, default=1.0,
                        help="every trunk activation this many times larger (see scaled_trunk)")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.WARNING)
    quiet = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    start = time.time()
    if args.ssd:
        source_model = integrity.load_model_file(os.path.join(args.ssd, "model.keras"))
    else:
        config = demo_config.get_config()
        source_model = train_lib.train_in_workdir(demo.stage_config(config, {}, {}),
                                                  os.path.join(args.workdir, "source"),
                                                  source=load_source(config.data, "train"), printer=quiet)
    probe = next(iter(eval_batches(target_config(args, 0))[1]))[0][:16]
    runs, scales = {}, {}
    for seed in args.seeds:
        config = target_config(args, seed)
        data = load_source(config.data, "train")
        models = {}
        for arm in args.arms:
            began = time.time()
            model = started(config, source_model, arm, seed, args.trunk_scale)
            scales.setdefault(arm, []).append(start_scale(model, probe))
            quiet(f"== seed {seed}, conv6/conv7 from {arm} ==")
            trainer = train_lib.Trainer(config, os.path.join(args.workdir, f"seed{seed}", arm), source=data,
                                        model=model)
            if trainer.start_step:
                raise SystemExit(f"{args.workdir}/seed{seed}/{arm} holds a trained run already; give another "
                                 "--workdir.")
            trainer.run(printer=quiet)
            models[arm] = trainer.model
            quiet(f"   {time.time() - began:.0f} s")
        results = evaluate_models(config, models, os.path.join(args.workdir, f"seed{seed}", "table"), printer=quiet)
        cells = {arm: [round(100 * results["cells"][arm]["clean"][k], 2) for k in ("mAP", "ci_low", "ci_high")]
                 for arm in models}
        differences = {}
        for d in results["differences"]:
            if d["attack"] == "clean" and "initialiser" in (d["model_a"], d["model_b"]):
                sign = 1 if d["model_b"] == "initialiser" else -1
                other = d["model_a"] if sign == 1 else d["model_b"]
                low, high = sorted((sign * d["ci_low"], sign * d["ci_high"]))
                differences[f"{other} − initialiser"] = [round(100 * sign * d["difference"], 2), round(100 * low, 2),
                                                         round(100 * high, 2)]
        runs[seed] = {"clean_map_percent_with_95ci": cells, "differences_points_with_95ci": differences,
                      "num_images": results["num_images"]}
    arms = {}
    for arm in args.arms:
        maps = [runs[s]["clean_map_percent_with_95ci"][arm][0] for s in args.seeds]
        entry = {"clean_map": summary(maps),
                 "start_scale": {k: round(float(np.mean([s[k] for s in scales[arm]])), 5) for k in scales[arm][0]}}
        if arm != "initialiser":
            diffs = [runs[s]["differences_points_with_95ci"][f"{arm} − initialiser"] for s in args.seeds]
            entry["minus_initialiser"] = {**summary([d[0] for d in diffs]),
                                          "above_0_on_seeds": sum(d[1] > 0 for d in diffs),
                                          "below_0_on_seeds": sum(d[2] < 0 for d in diffs)}
        arms[arm] = entry
    record = {"bench": "conv67_start", "seeds": list(args.seeds), "steps": args.steps,
              "train_images": args.train_images, "learning_rate": args.learning_rate,
              "trunk_scale": args.trunk_scale, "optimizer": "sgd",
              "batch_size": int(target_config(args, 0).train.batch_size), "arms": arms,
              "runs": {str(k): v for k, v in runs.items()}, "seconds": round(time.time() - start, 1)}
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    main()
