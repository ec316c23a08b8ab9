"""What each ``main.py --mode`` does, as plain functions of ``(config, workdir)`` so tests can call them.

``train`` trains (and resumes) in the workdir; ``evaluate`` scores the trained model under the configured attacks;
``attack`` writes adversarial images for inspection; ``demo`` runs the embedded end-to-end demonstration;
``export`` and ``import`` move models to and from SavedModel / TFLite / official PyTorch checkpoints.
"""

from __future__ import annotations

import os

import keras
import numpy as np

from robustdet_tf import train as train_lib


def load_trained_model(workdir: str, config) -> keras.Model:
    """The model of a workdir: ``model.keras`` if training finished, else the latest checkpoint."""
    path = os.path.join(workdir, "model.keras")
    if os.path.exists(path):
        return keras.saving.load_model(path)
    trainer = train_lib.Trainer(config, workdir)
    if trainer.start_step == 0:
        raise FileNotFoundError(
            f"{workdir} holds no trained model (no model.keras, no checkpoint): run --mode=train with this --workdir "
            "first, or --mode=import an official checkpoint"
        )
    return trainer.model


def run_train(config, workdir: str, model: keras.Model | None = None, source=None, printer=print) -> keras.Model:
    """Train (resuming whatever the workdir holds) and save ``model.keras`` when the target step is reached."""
    train_lib.check_workdir(workdir, config)
    has_checkpoint = os.path.isdir(os.path.join(workdir, "checkpoints"))
    if model is None and not has_checkpoint:
        model = train_lib.initial_model(config)
    trainer = train_lib.Trainer(config, workdir, source=source, model=model)
    if trainer.start_step:
        printer(f"resuming {workdir} at step {trainer.start_step}")
    trainer.run(printer=printer)
    if trainer.start_step >= config.train.steps:
        path = train_lib.save_model_atomically(trainer.model, os.path.join(workdir, "model.keras"))
        printer(f"saved {path}")
    return trainer.model


def eval_batches(config, source=None):
    from robustdet_tf.data import pipeline
    from robustdet_tf.data.sources import load_source

    source = source or load_source(config.data, "eval")
    batches = pipeline.eval_batches(
        source.dataset, image_size=config.model.image_size, batch_size=config.eval.batch_size,
        max_boxes=config.data.max_boxes,
    )
    return source, batches


def run_evaluate(config, workdir: str, models: dict | None = None, printer=print) -> dict:
    """Robustness evaluation of the workdir's model (or ``models``) under ``config.eval.attacks``."""
    from robustdet_tf.evaluation import robustness

    models = models or {os.path.basename(os.path.normpath(workdir)): load_trained_model(workdir, config)}
    source, batches = eval_batches(config)
    settings = config.eval
    overrides = settings.get("overrides", None) or {}
    overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides)
    overrides.update(metric=settings.metric, reference_offsets=settings.reference_offsets)
    results = robustness.evaluate_robustness(
        models, batches, source.class_names, workdir,
        attacks=list(settings.get("attacks", ["clean"])),
        protocol=settings.get("protocol", "reference"),
        overrides=overrides,
        sample_images=int(settings.get("sample_images", 0)),
    )
    printer(robustness.markdown_table(results))
    return results


def run_attack(config, workdir: str, printer=print) -> list[str]:
    """Write clean and adversarial images (A_cls PGD by default) of the first eval batch as PNG files."""
    import tensorflow as tf

    from robustdet_tf.attacks.pgd import pgd

    model = load_trained_model(workdir, config)
    _, batches = eval_batches(config)
    images, targets = next(iter(batches))
    method = config.eval.get("attack_method", "cls")
    adv = pgd(model, images, {"boxes": targets["boxes"], "labels": targets["labels"]}, method)
    out = os.path.join(workdir, "adversarial")
    os.makedirs(out, exist_ok=True)
    written = []
    for i in range(int(tf.shape(images)[0])):
        for tag, batch in (("clean", images), (method, adv)):
            path = os.path.join(out, f"{i:03d}_{tag}.png")
            keras.utils.save_img(path, np.clip(batch[i].numpy(), 0, 255).astype(np.uint8))
            written.append(path)
    printer(f"wrote {len(written)} images to {out}")
    return written


def run_export(config, workdir: str, export_dir: str, printer=print) -> dict:
    from robustdet_tf.export import export_all

    model = load_trained_model(workdir, config)
    paths = export_all(model, export_dir)
    printer(f"exported {paths}")
    return paths


def run_import(config, workdir: str, checkpoint: str | None, printer=print) -> str:
    from robustdet_tf.export.torch_import import import_checkpoint

    if not checkpoint:
        raise ValueError("--mode=import needs --checkpoint=<official .pth file>")
    train_lib.check_workdir(workdir, config)
    model = import_checkpoint(checkpoint, config.model)
    path = os.path.join(workdir, "model.keras")
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; import into an empty --workdir so nothing is overwritten")
    train_lib.save_model_atomically(model, path)
    train_lib.write_json_atomically(train_lib.model_config_dict(config), os.path.join(workdir, train_lib.MODEL_RECORD))
    printer(f"imported {checkpoint} into {path}")
    return path


def run_demo(config, workdir: str, printer=print) -> dict:
    from robustdet_tf import demo

    return demo.run(config, workdir, printer=printer)
