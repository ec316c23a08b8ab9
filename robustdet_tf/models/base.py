"""What every detector of the package shares: config → priors, pixels → network input, NMS, losses, one train step.

Why a base class: the plain SSD, the adversarial baselines and RobustDet differ only in their layers and in which
loss terms a step computes.  The step itself — unpack the data, let the adversary produce the attacked half, run
``compute_losses`` under the tape, refuse non-finite terms, apply coupled weight decay and the optimiser, track the
terms — is written once here; subclasses override ``compute_losses`` (and build ``self.detector``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import keras
import tensorflow as tf

from robustdet_tf import boxes as box_ops
from robustdet_tf import distribution
from robustdet_tf import priors as prior_lib
from robustdet_tf.detections import postprocess
from robustdet_tf.losses.multibox import multibox_loss
from robustdet_tf.models import training
from robustdet_tf.models.adversarial import AdversarialBatch
from robustdet_tf.models.detector import SSD300_EXTRAS, feature_map_sizes, preprocess

REFERENCE_MEAN = (104.0, 117.0, 123.0)  # subtracted from (R, G, B), docs/reference.md#preprocessing
COUNT_TERMS = ("triplets",)
"""Logged terms that are counts, not losses: not checked for finiteness."""
TOTAL = "loss"
"""The term the optimiser minimises: a weighted sum of the other terms, each of which is checked for finiteness."""


class TrainingData(NamedTuple):
    """One step's input: the clean half, and (adversarial training) the half the adversary attacks, ``to_attack``.

    The only place a step casts: images float32, targets float32 boxes and int32 labels (``training.as_targets``).
    """

    clean: tf.Tensor
    clean_targets: dict[str, tf.Tensor]
    to_attack: tf.Tensor | None = None
    to_attack_targets: dict[str, tf.Tensor] | None = None


def unpack_training_data(data, adversarial: bool) -> TrainingData:
    """``(images, targets)`` or, for adversarial training, ``((clean, targets), (to_attack, targets))``."""
    if not adversarial:
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        return TrainingData(tf.cast(images, tf.float32), training.as_targets(targets))
    pair = lambda x: isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[1], Mapping)  # noqa: E731
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(pair(half) for half in data)):
        raise ValueError("adversarial training takes ((clean_images, clean_targets), (images_to_attack, targets)) "
                         "batches, e.g. from robustdet_tf.data.pipeline.two_streams; got a plain batch.")
    (clean, clean_targets), (to_attack, to_attack_targets) = data
    return TrainingData(tf.cast(clean, tf.float32), training.as_targets(clean_targets), tf.cast(to_attack, tf.float32),
                        training.as_targets(to_attack_targets))


class Capabilities(NamedTuple):
    """What a detector can do, asked in one place instead of by probing its attributes.

    ``routed``: an AID mixes K kernels in every convolution (the model outputs π; the adaptive attacks, the
    mechanism diagnostics and the π output of the exports apply).  ``cfr``: conv4_3 is the probabilistic CFR layer
    with its decoder.  ``adversarial``: the model carries an adversarial-training schedule (SSD-AT, MTD, CWAT,
    RobustDet).  ``nan_guard``: the forward pass replaces NaN activations by 0 as the reference's RobustDet does
    (docs/reference.md#forward-pass-and-nan-guard), which hides a NaN gradient as a zero one."""

    routed: bool
    cfr: bool
    adversarial: bool
    nan_guard: bool = False


class DetectionModelBase(keras.Model):
    """Config → priors, pixels → preprocessed input, NMS, the MultiBox loss and the training step.

    Subclasses build ``self.detector`` (and ``self.adversary`` for adversarial training, else ``None``), implement
    ``call`` and ``compute_losses``, and create the trackers of the terms their steps report with
    ``_init_trackers``.
    """

    def __init__(
        self,
        num_classes: int = 21,
        image_size: int = 300,
        width: float = 1.0,
        extras: Sequence[Sequence[int]] = SSD300_EXTRAS,
        min_sizes: Sequence[float] = prior_lib.SSD300_VOC.min_sizes,
        max_sizes: Sequence[float] = prior_lib.SSD300_VOC.max_sizes,
        aspect_ratios: Sequence[Sequence[float]] = prior_lib.SSD300_VOC.aspect_ratios,
        steps: Sequence[float] | None = prior_lib.SSD300_VOC.steps,
        mean: Sequence[float] = REFERENCE_MEAN,
        weight_decay: float = 5e-4,
        match_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        score_threshold: float = 0.01,
        pre_nms_top_k: int = 200,
        nms_iou_threshold: float = 0.45,
        max_detections: int | None = None,
        kernel_initializer: str = "glorot_uniform",
        class_names: Sequence[str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.class_names = None if class_names is None else tuple(str(n) for n in class_names)
        if self.class_names is not None and len(self.class_names) >= self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: {len(self.class_names)} class names need num_classes >= "
                f"{len(self.class_names) + 1} (background + classes), got {self.num_classes}"
            )
        self.image_size = int(image_size)
        self.width = float(width)
        self.extras = tuple(tuple(int(v) for v in e) for e in extras)
        self.feature_maps = feature_map_sizes(self.image_size, self.extras)
        self.prior_spec = prior_lib.PriorSpec(min_sizes, max_sizes, aspect_ratios, steps, self.image_size,
                                              self.feature_maps)
        self.mean = tuple(float(v) for v in mean)
        self.weight_decay = float(weight_decay)
        self.match_threshold = float(match_threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.score_threshold = float(score_threshold)
        self.pre_nms_top_k = int(pre_nms_top_k)
        self.nms_iou_threshold = float(nms_iou_threshold)
        self.max_detections = None if max_detections is None else int(max_detections)
        self.kernel_initializer = kernel_initializer
        self.priors = tf.constant(self.prior_spec.boxes())
        self.boxes_per_location = self.prior_spec.boxes_per_location
        self.adversary = None
        self.loss_trackers = {}

    # The prior settings as the config spells them (one source: the prior spec).
    min_sizes = property(lambda self: self.prior_spec.min_sizes)
    max_sizes = property(lambda self: self.prior_spec.max_sizes)
    aspect_ratios = property(lambda self: self.prior_spec.aspect_ratios)
    steps = property(lambda self: self.prior_spec.steps)

    def _init_trackers(self, names: Sequence[str]) -> None:
        """One running mean per loss term a step reports (created eagerly, outside any ``tf.function``)."""
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}

    # -- shared helpers -------------------------------------------------------------------------------------------
    def preprocess(self, images: tf.Tensor) -> tf.Tensor:
        """Pixel-space RGB → the network input the reference feeds its first convolution."""
        return preprocess(images, self.mean)

    ROUTED = False
    """Whether the class routes its convolutions through an AID (``Capabilities.routed``; a class constant, so a
    config's ``kind`` answers it before a model exists: ``models.factory.is_routed``)."""

    def capabilities(self) -> Capabilities:
        """This model's ``Capabilities``."""
        return Capabilities(routed=self.ROUTED, cfr=bool(getattr(self, "cfr", False)),
                            adversarial=self.adversary is not None, nan_guard=self.detector.nan_guard)

    def detector_kwargs(self) -> dict:
        return dict(
            num_classes=self.num_classes,
            width=self.width,
            extras=self.extras,
            boxes_per_location=self.boxes_per_location,
            name="detector",
        )

    def detection_loss(
        self, outputs: Mapping[str, tf.Tensor], targets: Mapping[str, tf.Tensor], weights=None, global_norm=False,
        per_image=False,
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """MultiBox ``(loss_l, loss_c)``; ``global_norm`` normalises by the positives of the global batch per replica
        (``distribution.replica_mean``), so each replica's loss is its estimate of the whole batch's and their mean
        the one-device loss; ``per_image`` gives ``[B]`` terms, each image normalised by its own positives.  The
        boxes are matched to the priors once: the positive count and the loss share the match."""
        num_pos = matched = None
        if global_norm:
            loc_t, conf_t, _ = box_ops.match(targets["boxes"], targets["labels"], self.priors, self.match_threshold)
            matched = (loc_t, conf_t)
            num_pos = distribution.replica_mean(tf.reduce_sum(tf.cast(conf_t > 0, tf.float32)))
        return multibox_loss(
            outputs,
            targets,
            self.priors,
            threshold=self.match_threshold,
            neg_pos_ratio=self.neg_pos_ratio,
            weights=weights,
            num_positives=num_pos,
            per_image=per_image,
            matched=matched,
        )

    def postprocess_settings(self) -> dict:
        """The model's decode + NMS thresholds as ``detections.postprocess`` arguments (exports store them)."""
        return dict(
            score_threshold=self.score_threshold,
            pre_nms_top_k=self.pre_nms_top_k,
            iou_threshold=self.nms_iou_threshold,
            max_detections=self.max_detections,
        )

    def postprocess(self, outputs: Mapping[str, tf.Tensor], **overrides) -> dict[str, tf.Tensor]:
        """Raw outputs → OD-API detections with the model's thresholds (overridable per call)."""
        kwargs = {**self.postprocess_settings(), **overrides}
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

    # -- the training step ------------------------------------------------------------------------------------
    def compute_losses(self, data: TrainingData, adversarial: AdversarialBatch | None) -> dict[str, tf.Tensor]:
        """All loss terms of one step, inside the caller's tape; ``"loss"`` is the one optimised.

        Whole-batch terms: under ``tf.distribute`` each replica returns its estimate of the global batch's term
        (normalised by global counts, or computed on the gathered batch), so the replicas' mean is the one-device
        value.  Only ``apply_gradients`` divides by the replicas.
        """
        raise NotImplementedError

    def train_step(self, data):
        data = unpack_training_data(data, adversarial=self.adversary is not None)
        adversarial = None
        if self.adversary is not None:
            adversarial = self.adversary.next_batch(self, data.to_attack, data.to_attack_targets)
        with tf.GradientTape() as tape:
            terms = self.compute_losses(data, adversarial)
        parts = {k: v for k, v in terms.items() if k not in COUNT_TERMS and k != TOTAL}
        checks = training.check_finite(parts, self.optimizer.iterations)
        self.apply_gradients(terms[TOTAL], tape, checks)
        return self._track(terms)

    def test_step(self, data):
        images, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
        loss_l, loss_c = self.detection_loss(self(images, training=False), targets, global_norm=True)
        return self._track({"loss": loss_l + loss_c, "loss_l": loss_l, "loss_c": loss_c})

    def _track(self, terms: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Running means of the step's terms (what ``fit`` prints): whole-batch terms, averaged over the replicas."""
        for name, value in terms.items():
            self.loss_trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages multi-worker logs with reduce(MEAN, axis=0), which needs a batch axis (Keras 3.15).
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def apply_gradients(self, loss: tf.Tensor, tape: tf.GradientTape, checks=()) -> None:
        """Coupled weight decay + the optimiser update, after the given assertions.

        The one place that knows about replicas: ``loss`` is this replica's whole-batch estimate and Keras sums the
        replicas' gradients, so every gradient (decay included) is divided by the replica count.
        """
        variables = self.trainable_variables
        grads = training.gradients(self.optimizer, loss, tape, variables, self.weight_decay)
        grads = distribution.replica_share(grads)
        with tf.control_dependencies(list(checks)):
            self.optimizer.apply_gradients(zip(grads, variables))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' symbolic build when the model and its optimiser are built already (``train.compile_model``
        builds both): it averages the first distributed batch across replicas, which fails under
        ``MultiWorkerMirroredStrategy`` (TF 2.21 / Keras 3.15), and there is nothing left for it to build."""
        optimizer = getattr(self, "optimizer", None)
        if self.built and optimizer is not None and optimizer.built:
            return None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def get_config(self):
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "width": self.width,
            "extras": [list(e) for e in self.extras],
            **{k: v for k, v in self.prior_spec.to_dict().items() if k in prior_lib.PriorSpec.KEYS},
            "mean": list(self.mean),
            "weight_decay": self.weight_decay,
            "match_threshold": self.match_threshold,
            "neg_pos_ratio": self.neg_pos_ratio,
            "score_threshold": self.score_threshold,
            "pre_nms_top_k": self.pre_nms_top_k,
            "nms_iou_threshold": self.nms_iou_threshold,
            "max_detections": self.max_detections,
            "kernel_initializer": self.kernel_initializer,
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
