"""The plain SSD300 detector as a ``keras.Model`` that eats pixels and trains itself with the MultiBox loss.

Design choices (see ``design.md``): the model takes float RGB in ``[0, 255]`` and subtracts the reference's mean
first, so attacks, ε budgets and exports all live in pixel space; ``call`` returns the training-phase outputs
``{"loc", "logits"}``; ``detect`` adds decode + NMS; ``train_step`` reproduces the reference's SGD with coupled
weight decay.  Width and image size are configurable so tests and the demo run a tiny SSD of the same structure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import tensorflow as tf

from robustdet_tf import boxes as box_ops
from robustdet_tf.evaluation.postprocess import postprocess
from robustdet_tf.losses.multibox import multibox_loss
from robustdet_tf.models import training
from robustdet_tf.models.adversarial import AdversarialSchedule, concat_targets
from robustdet_tf.models.detector import SSD300_EXTRAS, Detector, feature_map_sizes, preprocess

REFERENCE_MEAN = (104.0, 117.0, 123.0)  # subtracted from (R, G, B), spec §1


class DetectionModelBase(keras.Model):
    """What every detector in the package shares: config → priors, pixels → preprocessed input, NMS, losses.

    Subclasses build ``self.detector``, implement ``call`` and create the trackers of the loss terms their steps
    report with ``_init_trackers``.
    """

    def __init__(
        self,
        num_classes: int = 21,
        image_size: int = 300,
        width: float = 1.0,
        extras: Sequence[Sequence[int]] = SSD300_EXTRAS,
        min_sizes: Sequence[float] = box_ops.VOC_MIN_SIZES,
        max_sizes: Sequence[float] = box_ops.VOC_MAX_SIZES,
        aspect_ratios: Sequence[Sequence[float]] = box_ops.SSD300_ASPECT_RATIOS,
        steps: Sequence[float] | None = box_ops.SSD300_STEPS,
        mean: Sequence[float] = REFERENCE_MEAN,
        weight_decay: float = 5e-4,
        match_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        score_threshold: float = 0.01,
        pre_nms_top_k: int = 200,
        nms_iou_threshold: float = 0.45,
        max_detections: int | None = None,
        kernel_initializer: str = "glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.width = float(width)
        self.extras = tuple(tuple(int(v) for v in e) for e in extras)
        self.min_sizes = tuple(float(v) for v in min_sizes)
        self.max_sizes = tuple(float(v) for v in max_sizes)
        self.aspect_ratios = tuple(tuple(float(a) for a in ars) for ars in aspect_ratios)
        self.steps = None if steps is None else tuple(float(v) for v in steps)
        self.mean = tuple(float(v) for v in mean)
        self.weight_decay = float(weight_decay)
        self.match_threshold = float(match_threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.score_threshold = float(score_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections = None if max_detections is None else int(max_detections)
        self.kernel_initializer = kernel_initializer
        self.feature_maps = feature_map_sizes(self.image_size, self.extras)
        self.priors = tf.constant(
            box_ops.prior_boxes(
                self.image_size, self.feature_maps, self.min_sizes, self.max_sizes, self.aspect_ratios, self.steps
            )
        )
        self.boxes_per_location = box_ops.boxes_per_location(self.aspect_ratios)
        self.loss_trackers = {}

    def _init_trackers(self, names: Sequence[str]) -> None:
        """One running mean per loss term a step reports (created eagerly, outside any ``tf.function``)."""
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}

    # -- shared helpers -------------------------------------------------------------------------------------------
    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """Pixel-space RGB → the network input the reference feeds its first convolution."""
        return preprocess(images, self.mean)

    def detector_kwargs(self) -> dict:
        return dict(
            num_classes=self.num_classes,
            width=self.width,
            extras=self.extras,
            boxes_per_location=self.boxes_per_location,
            name="detector",
        )

    def detection_loss(
        self, outputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor], weights=None, global_norm=False
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """MultiBox ``(loss_l, loss_c)``; ``global_norm`` normalises by positives summed over replicas."""
        num_pos = None
        if global_norm:
            _, conf_t, _ = box_ops.match(targets["boxes"], targets["labels"], self.priors, self.match_threshold)
            num_pos = training.global_sum(tf.reduce_sum(tf.cast(conf_t > 0, tf.float32)))
        return multibox_loss(
            outputs,
            targets,
            self.priors,
            threshold=self.match_threshold,
            neg_pos_ratio=self.neg_pos_ratio,
            weights=weights,
            num_positives=num_pos,
        )

    def postprocess(self, outputs: Mapping[str, tf.Tensor], **overrides) -> dict[str, tf.Tensor]:
        """Raw outputs → OD-API detections with the model's thresholds (overridable per call)."""
        kwargs = dict(
            score_threshold=self.score_threshold,
            pre_nms_top_k=self.pre_nms_top_k,
            iou_threshold=self.nms_iou_threshold,
            max_detections=self.max_detections,
        )
        kwargs.update(overrides)
        return postprocess(outputs["loc"], outputs["logits"], self.priors, **kwargs)

    def detect(self, images: tf.Tensor, **overrides) -> dict[str, tf.Tensor]:
        """Pixel-space images → detections (test mode)."""
        return self.postprocess(self(images, training=False), **overrides)

    def build(self, input_shape=None):
        """Create every weight by tracing one image of the configured size (sub-layers build lazily).

        Models build themselves at construction, so ``fit`` works at once (also under ``tf.distribute``, where
        Keras would otherwise trace the model with the first data element).
        """
        if self.built:
            return
        self.call(tf.zeros([1, self.image_size, self.image_size, 3]), training=False)
        self.built = True

    def predict_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        return self.detect(images)

    def _track(self, logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Running means of the step's loss terms (what ``fit`` prints)."""
        for name, value in logs.items():
            self.loss_trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def apply_gradients(self, loss: tf.Tensor, tape: tf.GradientTape, checks=()) -> None:
        """Coupled weight decay + the optimiser update, after the given assertions."""
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        grads = training.add_weight_decay(grads, variables, self.weight_decay)
        with tf.control_dependencies(list(checks)):
            self.optimizer.apply_gradients(zip(grads, variables))

    def get_config(self):
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "width": self.width,
            "extras": [list(e) for e in self.extras],
            "min_sizes": list(self.min_sizes),
            "max_sizes": list(self.max_sizes),
            "aspect_ratios": [list(a) for a in self.aspect_ratios],
            "steps": None if self.steps is None else list(self.steps),
            "mean": list(self.mean),
            "weight_decay": self.weight_decay,
            "match_threshold": self.match_threshold,
            "neg_pos_ratio": self.neg_pos_ratio,
            "score_threshold": self.score_threshold,
            "pre_nms_top_k": self.pre_nms_top_k,
            "nms_iou_threshold": self.nms_iou_threshold,
            "max_detections": self.max_detections,
            "kernel_initializer": self.kernel_initializer,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="robustdet_tf")
class SSD(DetectionModelBase):
    """SSD300-VGG16 (no batch norm) with plain convolutions.

    ``call(images, training=None)`` → ``{"loc": [B, P, 4], "logits": [B, P, C]}`` for pixel-space RGB input.
    ``train_step`` minimises ``loss_l + loss_c`` with coupled weight decay; compile with
    ``robustdet_tf.models.training.sgd()`` (lr 1e-3, momentum 0.9) to match the reference.

    ``adversarial`` (a dict of ``AdversarialSchedule`` arguments, e.g. ``{"method": "cls"}``) turns ``fit`` into
    the baselines' adversarial training (train_adv.py): the data must then yield
    ``((clean_images, clean_targets), (images_to_attack, their_targets))`` and each step trains on the clean half
    plus the current adversarial half (``clean_mix=True``, the reference) or on the adversarial half only.
    SSD-AT(A_cls) = ``cls``, SSD-AT(A_loc) = ``loc``, MTD = ``mtd``, CWAT = ``cwa``.
    """

    def __init__(self, *args, adversarial: Mapping | None = None, clean_mix: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.detector = Detector(conv="plain", kernel_initializer=self.kernel_initializer, **self.detector_kwargs())
        self.adversarial = None if adversarial is None else dict(adversarial)
        self.clean_mix = bool(clean_mix)
        self.adversary = None if adversarial is None else AdversarialSchedule(**self.adversarial)
        self._init_trackers(("loss", "loss_l", "loss_c"))
        self.build()

    def call(self, images, training=None):
        out = self.detector(self.preprocess(images), training=training)
        return {"loc": out["loc"], "logits": out["logits"]}

    def train_step(self, data):
        if self.adversary is None:
            images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        else:
            (clean, clean_targets), (to_attack, attack_targets) = data
            adv, _, adv_targets = self.adversary.next_batch(self, to_attack, attack_targets)
            images, targets = adv, adv_targets
            if self.clean_mix:
                images = tf.concat([tf.cast(clean, tf.float32), adv], 0)
                targets = concat_targets(clean_targets, adv_targets)
        with tf.GradientTape() as tape:
            outputs = self(images, training=True)
            loss_l, loss_c = self.detection_loss(outputs, targets, global_norm=True)
            loss = loss_l + loss_c
        checks = training.check_finite({"loss_l": loss_l, "loss_c": loss_c}, self.optimizer.iterations)
        self.apply_gradients(loss, tape, checks)
        scale = float(training.num_replicas())
        return self._track({"loss": loss * scale, "loss_l": loss_l * scale, "loss_c": loss_c * scale})

    def get_config(self):
        return {**super().get_config(), "adversarial": self.adversarial, "clean_mix": self.clean_mix}

    def test_step(self, data):
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        loss_l, loss_c = self.detection_loss(self(images, training=False), targets, global_norm=True)
        scale = float(training.num_replicas())
        return self._track({"loss": (loss_l + loss_c) * scale, "loss_l": loss_l * scale, "loss_c": loss_c * scale})
