"""Deployment formats (SavedModel, TFLite, .keras); ``export_all`` is what ``main.py --mode=export`` calls."""

from robustdet_tf.export.all_formats import FORMATS, export_all

__all__ = ["FORMATS", "export_all"]
