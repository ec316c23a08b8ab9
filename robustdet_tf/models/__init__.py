"""Models: the one detector builder, the plain SSD, RobustDet, the AID, and ``build_model`` (config → model)."""

from robustdet_tf.models.factory import build_model
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD

__all__ = ["SSD", "RobustDet", "build_model"]
