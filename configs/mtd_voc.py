"""MTD (Zhang and Wang 2019) as the reference reproduces it: per-batch choice of the loc or cls step.

See ``common.adversarial_baseline``.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    return common.adversarial_baseline("mtd")
