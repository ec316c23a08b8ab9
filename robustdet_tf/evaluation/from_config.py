"""The robustness evaluation a config describes: its evaluation data, its protocol overrides, its attack list.

Why a module of its own: the command line (``--mode=evaluate``) and the demo both evaluate models under
``config.eval``; both call ``evaluate_models`` here, so neither has to know the other.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from robustdet_tf.data import pipeline
from robustdet_tf.data.contract import DetectionSource
from robustdet_tf.data.sources import load_source
from robustdet_tf.evaluation import robustness


def eval_batches(config, source: DetectionSource | None = None) -> tuple[DetectionSource, tf.data.Dataset]:
    """The evaluation source of ``config.data`` and its batches at the model's image size."""
    source = source or load_source(config.data, "eval")
    batches = pipeline.eval_batches(
        source.dataset, image_size=config.model.image_size, batch_size=config.eval.batch_size,
        max_boxes=config.data.max_boxes,
    )
    return source, batches


def protocol_overrides(settings) -> dict:
    """``config.eval.overrides`` plus the metric settings of ``config.eval``, as ``make_protocol`` overrides."""
    overrides = settings.get("overrides", None) or {}
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    overrides.update(metric=settings.metric, reference_offsets=settings.reference_offsets)
    return overrides


def evaluate_models(config, models: Mapping[str, keras.Model], output_dir: str, printer=print) -> dict:
    """Robustness table of ``models`` under ``config.eval`` written to ``output_dir``; returns the results."""
    source, batches = eval_batches(config)
    settings = config.eval
    results = robustness.evaluate_robustness(
        models, batches, source.class_names, output_dir,
        attacks=list(settings.get("attacks", ["clean"])),
        protocol=settings.get("protocol", "reference"),
        overrides=protocol_overrides(settings),
        sample_images=int(settings.get("sample_images", 0)),
    )
    printer(robustness.markdown_table(results))
    return results
