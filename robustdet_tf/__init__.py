"""robustdet-tf: a TensorFlow/Keras implementation of RobustDet (ECCV 2022).

Conventions used everywhere in the package:

* Images are float32 RGB in pixel space ``[0, 255]``, shape ``[B, H, W, 3]``; models preprocess inside.
* Ground truth is a dict of padded dense tensors: ``boxes`` ``[B, N, 4]`` float32 in ``BOX_FORMAT``
  (``"rel_xyxy"``: x_min, y_min, x_max, y_max divided by the image width/height) and ``labels`` ``[B, N]`` int32
  holding the 0-based object class, ``-1`` for padding.  The network's class index is ``label + 1`` (0 is
  background).  Evaluation batches may add ``difficult`` ``[B, N]`` bool and ``image_id``.
* Detections follow the TF Object Detection API: ``detection_boxes`` (relative ymin, xmin, ymax, xmax),
  ``detection_scores``, ``detection_classes`` (network class, 1-based), ``num_detections``.
"""

BOX_FORMAT = "rel_xyxy"

__version__ = "0.1.0"

# A plain ``import robustdet_tf`` registers every serialisable layer and model with Keras (registration happens
# when their modules run), so ``keras.saving.load_model("model.keras")`` needs nothing else.  Imported last:
# the modules below read the names defined above.
from robustdet_tf.models import robustdet as _robustdet  # noqa: E402,F401  (imports the SSD and every layer)
