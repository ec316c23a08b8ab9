"""SSD-AT(A_loc): SSD300 adversarially trained against the localisation loss.

See ``common.adversarial_baseline``.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    return common.adversarial_baseline("loc")
