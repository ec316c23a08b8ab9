"""The block a training run starts with: what it trains, on which images, from which weights, for how long.

Why: a run that says nothing until its first loss line hides the mistakes that cost most — the wrong folder, a
class list that does not match the annotations, a data selection that reads a folder twice, an ImageNet file that
was not applied.  The block is printed once, before the first step, from what the run really holds (the source
the reader built, the model that was built or restored, the settings in force), so it can be checked at a glance
and kept in the log.
"""

from __future__ import annotations

import keras

from robustdet_tf.data.contract import DetectionSource
from robustdet_tf.models.factory import is_routed


def data_lines(source: DetectionSource, role: str = "training") -> list[str]:
    """``data: <name>: N images (k without objects), M objects`` and the objects of each class, when counted."""
    images = "an unknown number of" if source.num_examples is None else f"{source.num_examples}"
    line = f"{role} data: {source.name}: {images} images"
    if source.objects_per_class is None:
        return [f"{line} (objects not counted: this source is read as a stream)",
                f"classes ({len(source.class_names)}): {', '.join(source.class_names)}"]
    total = sum(source.objects_per_class)
    per_class = ", ".join(f"{name} {count}" for name, count in zip(source.class_names, source.objects_per_class))
    return [f"{line} ({source.background_images} without objects), {total} objects",
            f"classes ({len(source.class_names)}), objects each: {per_class}"]


def model_line(model: keras.Model, config) -> str:
    """Kind, layout, input size, classes and parameter count of the model the run trains."""
    kind = config.model.get("kind", "ssd")
    params = model.count_params() if model.built else 0
    extra = ""
    if is_routed(config.model):
        extra = (f", K = {config.model.num_kernels} kernels per convolution, AID width {config.model.aid_width}, "
                 f"CFR {'on' if config.model.get('cfr', False) else 'off'}")
    size = int(config.model.image_size)
    return (f"model: {kind} (VGG16 trunk, width {float(config.model.get('width', 1.0)):g}{extra}), input "
            f"{size}×{size}, {model.num_classes} classes with background, {params / 1e6:.2f} M parameters")


def schedule_line(config) -> str:
    """Steps, batch, optimiser, learning rate and its decay; the adversarial schedule if the model has one."""
    train = config.train
    optimizer = str(train.get("optimizer", "sgd"))
    momentum = f", momentum {train.momentum:g}" if optimizer == "sgd" else ""
    decay = (f", ×{train.lr_gamma:g} at steps {', '.join(str(s) for s in train.lr_steps)}"
             if train.get("lr_steps") else ", constant")
    line = (f"schedule: {train.steps} steps, batch {train.batch_size}, {optimizer} at {train.learning_rate:g}"
            f"{momentum}{decay}, seed {train.get('seed', 0)}")
    adversarial = config.model.get("adversarial", None)
    if adversarial:
        line += (f"; adversarial training: {adversarial['method']} PGD ε = {float(adversarial['epsilon']):g}, "
                 f"α = {float(adversarial['step_size']):g}, attacked batch renewed every {adversarial['steps']} "
                 "steps (interleaved)")
    return line


def training_report(config, source: DetectionSource, model: keras.Model, origin: str) -> list[str]:
    """The start-of-run block, one line per fact."""
    return ["== run ==", *data_lines(source), model_line(model, config), f"weights from: {origin}",
            schedule_line(config)]
