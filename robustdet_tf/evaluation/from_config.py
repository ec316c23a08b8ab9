"""The robustness evaluation a config describes: its evaluation data, its protocol overrides, its attack list.

Why a module of its own: the command line (``--mode=evaluate``, ``--mode=attack``) and the demo all evaluate models
under ``config.eval``; they call the functions here, so none has to know the others.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial

import keras
import tensorflow as tf

from robustdet_tf.data import pipeline
from robustdet_tf.data.contract import DetectionSource, check_labels_fit
from robustdet_tf.data.sources import load_source
from robustdet_tf.distribution import make_strategy
from robustdet_tf.evaluation import robustness
from robustdet_tf.evaluation.adversarial_images import write_adversarial_set
from robustdet_tf.evaluation.evaluate import make_metric
from robustdet_tf.evaluation.table_spec import TableRun, TableSpec

DEFAULT_ATTACKS = ("clean", "A_cls", "A_loc", "CWA")
"""The columns ``--mode=evaluate`` runs unless ``config.eval.attacks`` names others: the PGD-20 attacks of Table 1
that cost one gradient a step.  MTD (two), con and DAG-150 (150 steps) are added on request."""


def eval_batches(config, source: DetectionSource | None = None,
                 image_size: int | None = None) -> tuple[DetectionSource, tf.data.Dataset]:
    """The evaluation source of ``config.data`` and its batches at ``image_size`` (default: the config's model)."""
    source = source or load_source(config.data, "eval")
    batches = pipeline.eval_batches(
        source.dataset, image_size=int(image_size or config.model.image_size), batch_size=config.eval.batch_size,
        max_boxes=config.data.max_boxes,
    )
    return source, batches


def patch_training_batches(config, image_size: int) -> tf.data.Dataset:
    """The training set the ``Patch`` column fits its patches on: the config's training source, resized like the
    evaluation images (no augmentation), in its own order."""
    source = load_source(config.data, "train")
    return pipeline.eval_batches(source.dataset, image_size=int(image_size), batch_size=config.eval.batch_size,
                                 max_boxes=config.data.max_boxes)


def _checked_batches(config, models: Mapping[str, keras.Model]) -> tuple[DetectionSource, tf.data.Dataset]:
    """The evaluation batches at the models' own input size, after checking that every model knows these classes."""
    sizes = {int(getattr(m, "image_size", config.model.image_size)) for m in models.values()}
    if len(sizes) != 1:
        raise ValueError(f"the models take different input sizes {sorted(sizes)}; evaluate them separately.")
    source, batches = eval_batches(config, image_size=sizes.pop())
    for name, model in models.items():
        check_labels_fit(source, model.num_classes, model.class_names, f"the model {name!r}")
    return source, batches


def evaluate_models(config, models: Mapping[str, keras.Model], output_dir: str, printer=print,
                    strategy: tf.distribute.Strategy | None = None) -> dict | None:
    """Robustness table of ``models`` under ``config.eval`` written to ``output_dir``; returns the results (``None``
    on a worker other than the chief, which only computes its shards).  ``strategy``: see ``eval_strategy``."""
    source, batches = _checked_batches(config, models)
    settings = config.eval
    image_size = int(getattr(next(iter(models.values())), "image_size", config.model.image_size))
    data = {"name": source.name, "num_examples": source.num_examples, "batch_size": int(settings.batch_size),
            "image_size": image_size, "max_boxes": int(config.data.max_boxes)}
    spec = TableSpec.from_config(settings)
    patch_batches = patch_training_batches(config, image_size) if "Patch" in spec.attacks else None
    results = robustness.evaluate_robustness(models, batches, source.class_names, output_dir, spec,
                                             TableRun(strategy=strategy, printer=printer, data=data,
                                                      patch_batches=patch_batches))
    if results is not None:
        printer(robustness.markdown_table(results))
    return results


EVAL_STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def eval_strategy(settings) -> tf.distribute.Strategy | None:
    """The in-process replicas of ``config.eval.strategy`` (names as ``train.strategy``; ``None``: one device).

    Workers are not a strategy here: under ``TF_CONFIG`` each worker evaluates its own shards (``evaluation.sharded``)
    without collectives, so ``multi_worker`` only insists on ``TF_CONFIG`` and uses the local devices as ``auto``.
    """
    name = str(settings.strategy)
    if name not in EVAL_STRATEGIES:
        raise ValueError(f"config.eval.strategy={name!r}: use one of {EVAL_STRATEGIES} (workers come from TF_CONFIG).")
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("config.eval.strategy='multi_worker' reads the workers from the TF_CONFIG environment "
                             "variable, which is not set; see docs/scaling.md.")
        name = "auto"
    strategy = make_strategy(name)
    return strategy if strategy.num_replicas_in_sync > 1 else None


def attack_dataset(config, model: keras.Model, output_dir: str, printer=print) -> dict:
    """``--mode=attack``: the evaluation set under ``config.eval.attack``, written as exact uint8 PNGs, with the
    mAP drop measured on those pixels (see ``adversarial_images.py``)."""
    source, batches = _checked_batches(config, {"model": model})
    settings = config.eval
    protocol = TableSpec.from_config(settings).resolved_protocol()
    limit = int(settings.attack_images) or None
    metric_factory = partial(make_metric, protocol["metric"], source.class_names,
                             offsets=protocol["voc_offsets"])
    attack_name = settings.attack
    summary = write_adversarial_set(model, batches, attack_name, protocol, metric_factory, output_dir, limit)
    bound = "unbounded" if summary["epsilon"] is None else f"ε = {summary['epsilon']:g}"
    printer(f"{attack_name} ({bound}) on {summary['num_images']} images of {source.name}: {summary['metric']} "
            f"{100 * summary['clean']:.1f} → {100 * summary['attacked']:.1f} (drop {100 * summary['drop']:.1f} "
            f"points); ‖adv − clean‖∞ = {summary['linf']} levels; {summary['files']} PNGs in "
            f"{os.path.abspath(output_dir)}")
    return summary
