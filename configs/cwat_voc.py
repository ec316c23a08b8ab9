"""CWAT (Chen et al. 2021) as the reference reproduces it: PGD-20 on the class-wise loss.

See ``common.adversarial_baseline``.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    return common.adversarial_baseline("cwa")
