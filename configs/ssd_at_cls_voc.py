"""SSD-AT(A_cls): SSD300 adversarially trained against the classification loss.

See ``common.adversarial_baseline``.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    return common.adversarial_baseline("cls")
