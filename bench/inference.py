"""Per-image inference latency at batch 1 of Keras, SavedModel and TFLite, for SSD300 and RobustDet (300×300,
full width), measured side by side in one run.

Prints ONE JSON line.  Every runtime computes the same thing — float pixels in, raw ``loc``/``logits`` (and ``pi``)
out, no NMS — so the numbers compare runtimes, not post-processing:

* ``keras``: the Keras model's ``call`` in a ``tf.function`` (graph mode, as ``predict`` runs it);
* ``saved_model``: the exported ``raw`` signature, reloaded with ``tf.saved_model.load``;
* ``tflite_<quantization>``: the exported ``.tflite`` in the LiteRT interpreter with ``--threads`` threads
  (RobustDet's AAconv as the export's default, ``stacked``; ``--tflite_map_fn`` adds the ``map_fn`` variant).

Weights are random (latency does not depend on them).  After a warm-up call, repeats are interleaved across
runtimes (keras, saved_model, tflite, keras, ...) so load from other processes hits all alike; medians are
reported.  Also reported: the one-off export/convert seconds and TFLite file sizes.  Default settings take about
3 minutes on 2 busy cores (most of it exporting and converting the 116 M-parameter RobustDet); ``--quantized``
adds the dynamic-range TFLite models and ``--tflite_map_fn`` the slow map_fn variant (a minute or more each).

    python bench/inference.py [--repeats 3 --threads 2 --models ssd,robustdet --quantized --tflite_map_fn]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustdet_tf.export.saved_model import export_saved_model, raw_outputs  # noqa: E402
from robustdet_tf.export.tflite import convert_to_tflite, make_interpreter  # noqa: E402


def _build(name: str):
    if name == "ssd":
        from robustdet_tf.models.ssd import SSD

        model = SSD()
    elif name == "robustdet":
        from robustdet_tf.models.robustdet import RobustDet

        model = RobustDet()
    else:
        raise ValueError(f"unknown model {name!r}; choose ssd or robustdet")
    model.build()
    return model


def _runtimes(model, workdir: str, args, report: dict, prefix: str) -> dict[str, Callable[[np.ndarray], object]]:
    """runtime name -> function(images) for one model; export times go into ``report``."""
    keras_fn = tf.function(lambda images: raw_outputs(model, images))
    runtimes = {"keras": lambda x: keras_fn(tf.constant(x))}

    start = time.perf_counter()
    path = export_saved_model(model, os.path.join(workdir, f"{prefix}_saved_model"))
    raw = tf.saved_model.load(path).signatures["raw"]
    report[f"{prefix}_saved_model_export_seconds"] = round(time.perf_counter() - start, 1)
    runtimes["saved_model"] = lambda x: raw(images=tf.constant(x))

    variants = [("float32", None)] + ([("dynamic_range", None)] if args.quantized else [])
    if args.tflite_map_fn and hasattr(model, "aid"):
        variants.append(("float32", "map_fn"))
    for quantization, implementation in variants:
        name = f"tflite_{quantization}" + (f"_{implementation}" if implementation else "")
        start = time.perf_counter()
        blob = convert_to_tflite(model, quantization, implementation)
        report[f"{prefix}_{name}_convert_seconds"] = round(time.perf_counter() - start, 1)
        report[f"{prefix}_{name}_megabytes"] = round(len(blob) / 2**20, 1)
        runner = make_interpreter(model_content=blob, num_threads=args.threads).get_signature_runner()
        del blob
        runtimes[name] = lambda x, runner=runner: runner(images=x)
    return runtimes


def _time(fn: Callable, images: np.ndarray) -> float:
    start = time.perf_counter()
    out = fn(images)
    for value in (out.values() if isinstance(out, dict) else [out]):
        np.asarray(value)  # wait for the result
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ssd,robustdet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads")
    parser.add_argument("--quantized", action="store_true", help="also time the dynamic-range TFLite models")
    parser.add_argument("--tflite_map_fn", action="store_true", help="also time RobustDet's map_fn TFLite variant")
    args = parser.parse_args()
    report = {
        "benchmark": "inference",
        "batch": 1,
        "image_size": 300,
        "repeats": args.repeats,
        "tflite_threads": args.threads,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
        "tensorflow": tf.__version__,
    }
    images = np.random.default_rng(0).uniform(0, 255, (1, 300, 300, 3)).astype(np.float32)
    workdir = tempfile.mkdtemp(prefix="bench_inference_")
    started = time.perf_counter()
    try:
        for name in args.models.split(","):
            model = _build(name)
            if name == "robustdet":
                report["robustdet_aaconv_implementation"] = model.detector.vgg_convs["vgg_0"].resolved_implementation
            runtimes = _runtimes(model, workdir, args, report, name)
            times = {runtime: [] for runtime in runtimes}
            for fn in runtimes.values():
                _time(fn, images)  # warm-up: tracing, XNNPACK / oneDNN setup
            for _ in range(args.repeats):
                for runtime, fn in runtimes.items():
                    times[runtime].append(_time(fn, images))
            for runtime, values in times.items():
                report[f"{name}_{runtime}_seconds"] = round(statistics.median(values), 4)
            for runtime in runtimes:
                if runtime != "keras":
                    ratio = report[f"{name}_{runtime}_seconds"] / report[f"{name}_keras_seconds"]
                    report[f"{name}_{runtime}_over_keras"] = round(ratio, 3)
            del runtimes, model
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
