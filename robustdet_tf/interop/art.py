"""Our Keras detectors as an Adversarial Robustness Toolbox (ART) object detector (issue 14).

Why: a robustness claim is more credible when attacks written by others reproduce it.  ART's evasion attacks for
object detection (``ProjectedGradientDescent``, ``DPatch``, ``RobustDPatch``, ...) need an estimator with
``predict`` → ``[{"boxes", "labels", "scores"}]`` per image and ``loss_gradient`` / ``compute_losses``; this module
gives any model of the package (SSD, RobustDet, RobustDet*) that interface without copying it.

Conventions, ART's "PyTorch format" (``native_label_is_pytorch_format = True``): images ``[N, H, W, 3]`` float in
pixel space, channels last, ``clip_values = (0, 255)`` — our models' own input contract, so ART's ε is in pixels
like ours; boxes absolute ``[x1, y1, x2, y2]`` in pixels of the input; labels 1-based class indices
(``class_names[label - 1]``; 0 is the background, as in torchvision and our ``detection_classes``).  The loss is
the MultiBox loss of the model in test mode: ``loss_l`` + ``loss_c`` (``attack_losses`` picks terms), exactly what
our A_cls / A_loc / con attacks climb, so ``loss_gradient`` equals ``attacks.pgd.input_gradient`` of ``con``.

ART is an optional dependency (``pip install adversarial-robustness-toolbox``); importing this module without it
fails with that instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from robustdet_tf.boxes import BOX_FORMAT, convert_format

try:
    from art.estimators.object_detection.object_detector import ObjectDetectorMixin
    from art.estimators.tensorflow import TensorFlowV2Estimator
except ImportError as err:  # pragma: no cover - exercised only without ART
    raise ImportError("robustdet_tf.interop.art needs the Adversarial Robustness Toolbox: "
                      "pip install adversarial-robustness-toolbox") from err

LOSS_TERMS = ("loss_l", "loss_c")


def targets_from_art(y: Sequence[dict[str, Any]], height: int, width: int) -> dict[str, tf.Tensor]:
    """ART's per-image ``{"boxes": [n, 4] absolute x1y1x2y2, "labels": [n] 1-based}`` → our padded targets
    (``rel_xyxy`` boxes, 0-based labels, −1 padding).  Extra keys (``scores`` of predictions) are ignored."""
    count = max([len(np.asarray(item["labels"]).reshape(-1)) for item in y] + [1])
    boxes = np.zeros((len(y), count, 4), np.float32)
    labels = -np.ones((len(y), count), np.int32)
    for i, item in enumerate(y):
        lab = np.asarray(item["labels"]).reshape(-1).astype(np.int64)
        box = np.asarray(item["boxes"], np.float32).reshape(-1, 4)
        if len(lab) != len(box):
            raise ValueError(f"ART target {i} has {len(box)} boxes but {len(lab)} labels.")
        if np.any(lab < 1):
            raise ValueError(f"ART target {i} has labels {lab.tolist()}; labels are 1-based class indices "
                             "(0 is the background), as this adapter's predict returns them.")
        boxes[i, : len(lab)] = convert_format(box, "xyxy", BOX_FORMAT, height=height, width=width)
        labels[i, : len(lab)] = lab - 1
    return {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}


def detections_to_art(detections: dict[str, Any], height: int, width: int) -> list[dict[str, np.ndarray]]:
    """Our OD-API detections (relative ``ymin, xmin, ymax, xmax``) → ART's per-image absolute x1y1x2y2 dicts."""
    boxes = np.asarray(detections["detection_boxes"])
    scores = np.asarray(detections["detection_scores"])
    classes = np.rint(np.asarray(detections["detection_classes"])).astype(np.int64)
    counts = np.rint(np.asarray(detections["num_detections"])).astype(np.int64).reshape(-1)
    out = []
    for i, n in enumerate(counts):
        xyxy = convert_format(boxes[i, :n], "rel_yxyx", "xyxy", height=height, width=width)
        out.append({"boxes": xyxy.astype(np.float32), "labels": classes[i, :n], "scores": scores[i, :n]})
    return out


class ARTObjectDetector(ObjectDetectorMixin, TensorFlowV2Estimator):
    """An ART object detector around one of our models (see the module docstring for the conventions).

    Args:
      model: a detector of the package (pixel input, ``detect``, ``detection_loss``).
      attack_losses: the loss terms ``loss_gradient`` differentiates, from ``("loss_l", "loss_c")``.
      clip_values: must be ``(0, 255)``: our models eat pixels.
      preprocessing_defences, postprocessing_defences, preprocessing: ART's; defences are refused (put them in
        the model), ``preprocessing`` must stay the identity for ε to mean pixels.
    """

    estimator_params = TensorFlowV2Estimator.estimator_params + ["attack_losses"]

    def __init__(self, model, attack_losses: Sequence[str] = LOSS_TERMS, clip_values=(0.0, 255.0),
                 channels_first: bool = False, preprocessing_defences=None, postprocessing_defences=None,
                 preprocessing=(0.0, 1.0)):
        if channels_first:
            raise ValueError("our detectors take channels-last images [N, H, W, 3]; use channels_first=False.")
        if tuple(float(v) for v in np.ravel(clip_values)) != (0.0, 255.0):
            raise ValueError(f"clip_values must be (0, 255) (our models eat pixels), got {clip_values}.")
        if preprocessing_defences is not None or postprocessing_defences is not None:
            raise ValueError("this adapter takes no ART defences; build them into the Keras model instead.")
        unknown = [t for t in attack_losses if t not in LOSS_TERMS]
        if unknown or not attack_losses:
            raise ValueError(f"attack_losses {list(attack_losses)} must be a non-empty subset of {LOSS_TERMS}.")
        super().__init__(model=model, clip_values=(0.0, 255.0), channels_first=False,
                         preprocessing_defences=None, postprocessing_defences=None, preprocessing=preprocessing)
        self.attack_losses = tuple(attack_losses)
        size = int(model.image_size)
        self._input_shape = (size, size, 3)
        self._detect = tf.function(lambda x: model.detect(x), reduce_retracing=True)
        self._losses = tf.function(self._loss_terms, reduce_retracing=True)
        self._gradient = tf.function(self._loss_gradient, reduce_retracing=True)

    # -- ART's interface ------------------------------------------------------------------------------------------
    @property
    def native_label_is_pytorch_format(self) -> bool:
        return True

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    def predict(self, x: np.ndarray, batch_size: int = 32, **kwargs) -> list[dict[str, np.ndarray]]:
        """Detections of every image, batched: ``[{"boxes": [m, 4] x1y1x2y2 px, "labels": [m], "scores": [m]}]``."""
        x = self._checked(x)
        x_pre, _ = self._apply_preprocessing(x, y=None, fit=False)
        out = []
        for start in range(0, len(x_pre), batch_size):
            detections = self._detect(tf.constant(x_pre[start : start + batch_size], tf.float32))
            out += detections_to_art({k: v.numpy() for k, v in detections.items()}, *x.shape[1:3])
        return out

    def loss_gradient(self, x: np.ndarray, y: Sequence[dict[str, Any]], **kwargs) -> np.ndarray:
        """∇ₓ of the sum of ``attack_losses`` (MultiBox, test mode), the shape of ``x``."""
        x = self._checked(x)
        x_pre, _ = self._apply_preprocessing(x, y=None, fit=False)
        grads = self._gradient(tf.constant(x_pre, tf.float32), targets_from_art(y, *x.shape[1:3])).numpy()
        return self._apply_preprocessing_gradient(x, grads).astype(x.dtype, copy=False)

    def compute_losses(self, x: np.ndarray, y: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        x = self._checked(x)
        x_pre, _ = self._apply_preprocessing(x, y=None, fit=False)
        terms = self._losses(tf.constant(x_pre, tf.float32), targets_from_art(y, *x.shape[1:3]))
        return {name: np.asarray(value.numpy()) for name, value in zip(LOSS_TERMS, terms)}

    def compute_loss(self, x: np.ndarray, y: Sequence[dict[str, Any]], **kwargs) -> np.ndarray:
        losses = self.compute_losses(x, y)
        return np.asarray(sum(losses[name] for name in self.attack_losses))

    def fit(self, x, y, batch_size: int = 128, nb_epochs: int = 20, **kwargs) -> None:
        raise NotImplementedError("train with robustdet_tf (main.py --mode=train); this adapter only attacks.")

    def get_activations(self, x, layer, batch_size: int = 128, framework: bool = False):
        raise NotImplementedError("get_activations is not offered by the robustdet_tf ART adapter.")

    # -- graph functions ------------------------------------------------------------------------------------------
    def _loss_terms(self, images, targets):
        return self._model.detection_loss(self._model(images, training=False), targets)

    def _loss_gradient(self, images, targets):
        with tf.GradientTape() as tape:
            tape.watch(images)
            terms = dict(zip(LOSS_TERMS, self._loss_terms(images, targets)))
            loss = tf.add_n([terms[name] for name in self.attack_losses])
        return tape.gradient(loss, images)

    def _checked(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self._input_shape:
            raise ValueError(f"images must be [N, {', '.join(map(str, self._input_shape))}] channels-last pixels "
                             f"(the model's input), got shape {x.shape}.")
        return x
