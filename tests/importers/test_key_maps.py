"""Official state-dict keys → our variables and layouts (docs/reference.md#porting-notes): the layout permutations,
``torch_shape`` and ``official_weight_map`` checked against the official key/shape listing built by
``official_reference``."""

import keras
import numpy as np
import pytest

from robustdet_tf.importers.key_maps import (
    AID_PREFIX,
    NUM_BATCHES_TRACKED,
    PERMUTATIONS,
    official_weight_map,
    to_keras_layout,
    to_torch_layout,
    torch_shape,
)
from robustdet_tf.models.discriminator import build_discriminator
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.importers import official_reference as ref

# PyTorch layout → Keras layout written as index equations, independently of PERMUTATIONS.
EINSUM = {
    "conv": "oikl->klio",  # Conv2d [out, in, kh, kw] → [kh, kw, in, out]
    "dynamic_conv": "Koikl->Kklio",  # DynamicConv2d [K, out, in, kh, kw] → [K, kh, kw, in, out]
    "conv_transpose": "iokl->kloi",  # ConvTranspose2d [in, out, kh, kw] → Conv2DTranspose [kh, kw, out, in]
    "linear": "oi->io",  # Linear [out, in] → [in, out]
}
TORCH_SHAPES = {"conv": (5, 4, 3, 2), "dynamic_conv": (6, 5, 4, 3, 2), "conv_transpose": (5, 4, 3, 2),
                "linear": (5, 4), "same": (7,)}


@pytest.mark.parametrize("layout", sorted(PERMUTATIONS))
def test_layouts_move_every_element_where_pytorch_expects_it_and_round_trip(layout):
    torch = np.random.default_rng(0).standard_normal(TORCH_SHAPES[layout]).astype(np.float32)
    keras_array = to_keras_layout(torch, layout)
    want = torch if layout == "same" else np.einsum(EINSUM[layout], torch)
    np.testing.assert_array_equal(keras_array, want)
    back = to_torch_layout(keras_array, layout)
    assert back.shape == torch.shape
    np.testing.assert_array_equal(back, torch)  # exactly, element by element
    assert torch_shape(keras_array.shape, layout) == torch.shape


def test_every_layout_is_covered_and_unknown_ones_fail():
    assert set(PERMUTATIONS) == set(TORCH_SHAPES)
    assert torch_shape([3, 3, 16, 32], "conv") == (32, 16, 3, 3)
    assert torch_shape((4, 3, 3, 16, 32), "dynamic_conv") == (4, 32, 16, 3, 3)
    assert torch_shape((3, 3, 8, 16), "conv_transpose") == (16, 8, 3, 3)
    assert all(type(d) is int for d in torch_shape(np.array([2, 3]), "linear"))
    with pytest.raises(KeyError):
        to_keras_layout(np.zeros((2, 2)), "depthwise")


def assert_map_matches_listing(model, listing):
    """Every official key but ``num_batches_tracked`` maps to one distinct variable whose shape, brought back to
    PyTorch's layout, is the official one; the detector's keys come in the official order."""
    entries = official_weight_map(model)
    official = [k for k in listing if not k.endswith(NUM_BATCHES_TRACKED)]
    assert sorted(entries) == sorted(official)
    detector_keys = lambda keys: [k for k in keys if not k.startswith((AID_PREFIX, "decoder."))]  # noqa: E731
    assert detector_keys(entries) == detector_keys(official)
    for key, (variable, layout) in entries.items():
        assert torch_shape(variable.shape, layout) == listing[key], key
    variables = [id(v) for v, _ in entries.values()]
    assert len(set(variables)) == len(variables)
    return entries


def test_ssd_map_is_the_official_listing_and_covers_every_weight():
    model = SSD(**TINY_SSD)
    entries = assert_map_matches_listing(model, ref.official_shapes(TINY_SSD))
    assert {id(v) for v in model.weights} == {id(v) for v, _ in entries.values()}
    assert entries["vgg.0.weight"][0] is model.detector.vgg_convs["vgg_0"].kernel
    assert entries["L2Norm.weight"] == (model.detector.l2norm.weight, "same")


def test_robustdet_star_map_covers_detector_aid_and_decoder():
    model = RobustDet(**TINY_SSD, cfr=True, aid_width=8, decoder_width=16)
    entries = assert_map_matches_listing(model, ref.official_shapes(TINY_SSD, 4, True, 8, 16))
    layouts = {key: layout for key, (_, layout) in entries.items()}
    assert layouts["vgg.21.conv_mean.weight"] == layouts["vgg.0.weight"] == "dynamic_conv"
    assert layouts["decoder.3.weight"] == "conv_transpose" and layouts["decoder.0.weight"] == "conv"
    assert layouts[AID_PREFIX + "fc.weight"] == "linear" and layouts["decoder.1.running_var"] == "same"
    assert entries["decoder.1.running_var"][0] is model.decoder.decoder_layers[1].moving_variance
    mapped = {id(v) for v, _ in entries.values()}
    for group in (model.detector, model.aid, model.decoder):
        assert {id(v) for v in group.weights} <= mapped, group.name  # trainable weights and BN statistics


def test_bare_aid_uses_unprefixed_torchvision_keys_and_other_models_are_refused():
    aid = build_discriminator(num_kernels=3, base_width=4)
    entries = official_weight_map(aid)
    assert "conv1.weight" in entries and "fc.bias" in entries and not any(k.startswith("disc.") for k in entries)
    assert entries["fc.weight"][1] == "linear" and entries["conv1.weight"][1] == "conv"
    assert {id(v) for v, _ in entries.values()} == {id(v) for v in aid.weights}
    with pytest.raises(TypeError, match="official_weight_map: Sequential 'plain' is neither an SSD/RobustDet"):
        official_weight_map(keras.Sequential([keras.layers.Dense(1)], name="plain"))
