"""Deployment formats (SavedModel, TFLite, .keras) and the official PyTorch checkpoints.

``export_all`` and ``import_checkpoint`` are what ``main.py --mode=export`` / ``--mode=import`` call.
"""

from robustdet_tf.export.all_formats import FORMATS, export_all
from robustdet_tf.export.torch_import import import_checkpoint

__all__ = ["FORMATS", "export_all", "import_checkpoint"]
