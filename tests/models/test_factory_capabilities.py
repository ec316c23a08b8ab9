"""One way to ask what a model can do: ``capabilities()`` on a model, ``is_routed`` on a config; the package asks
nothing else (no attribute probes of models, no ``kind`` string comparisons)."""

import pathlib
import re

import keras

from robustdet_tf.models.base import Capabilities
from robustdet_tf.models.factory import is_routed
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD


def test_capabilities_of_each_model_and_config():
    keras.utils.set_random_seed(0)
    assert SSD(**TINY_SSD).capabilities() == Capabilities(routed=False, cfr=False, adversarial=False)
    assert SSD(**TINY_SSD, adversarial={"method": "cls"}).capabilities().adversarial
    star = RobustDet(**TINY_SSD, num_kernels=2, aid_width=4, cfr=True, decoder_width=16)
    assert star.capabilities() == Capabilities(routed=True, cfr=True, adversarial=True, nan_guard=True)
    assert is_routed({"kind": "robustdet"}) and not is_routed({"kind": "ssd"}) and not is_routed({})


def test_the_package_asks_models_through_capabilities_not_probes():
    root = pathlib.Path(__file__).resolve().parents[2] / "robustdet_tf"
    text = "\n".join(p.read_text(encoding="utf-8") for p in root.rglob("*.py"))
    assert len(re.findall(r"(?:hasattr|getattr)\(model\b", text)) <= 3
    assert not re.search(r"""==\s*["']robustdet["']""", text)
