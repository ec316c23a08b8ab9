"""The shared SSD300-VGG16 builder: parameter counts, feature-map shapes (docs/reference.md#parameter-counts) and
PyTorch padding."""

import numpy as np
import pytest
import tensorflow as tf

from robustdet_tf.layers.aaconv import grouped_conv_supported
from robustdet_tf.models.detector import Detector, feature_map_sizes
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD


def numpy_conv(x, kernel, bias, stride, pad):
    """Independent NHWC convolution with symmetric zero padding, as PyTorch computes it."""
    x = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    kh, kw = kernel.shape[:2]
    out_h = (x.shape[1] - kh) // stride + 1
    out_w = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out + bias


@pytest.mark.parametrize("num_classes, expected", [(21, 26_285_486), (201, 50_344_646)])
def test_ssd300_parameter_counts(num_classes, expected):
    model = SSD(num_classes=num_classes)
    model.build()
    assert model.count_params() == expected
    assert len(model.detector.all_convs()) == 35


def test_ssd300_feature_map_shapes():
    assert feature_map_sizes(300) == (38, 19, 10, 5, 3, 1)
    det = Detector(num_classes=21)
    out = det(tf.zeros([1, 300, 300, 3]), return_features=True)
    f = {k: tuple(v.shape[1:]) for k, v in out["features"].items()}
    assert f["vgg_1"] == (300, 300, 64) and f["vgg_4"] == (150, 150, 64) and f["vgg_9"] == (75, 75, 128)
    assert f["vgg_16"] == (38, 38, 256) and f["vgg_22"] == (38, 38, 512) and f["vgg_23"] == (19, 19, 512)
    assert f["vgg_30"] == (19, 19, 512) and f["vgg_34"] == (19, 19, 1024)
    extras = [f[f"extras_{i}"] for i in range(8)]
    assert extras == [(19, 19, 256), (10, 10, 512), (10, 10, 128), (5, 5, 256), (5, 5, 128), (3, 3, 256),
                      (3, 3, 128), (1, 1, 256)]
    assert [tuple(s.shape[1:]) for s in out["sources"]] == [(38, 38, 512), (19, 19, 1024), (10, 10, 512),
                                                           (5, 5, 256), (3, 3, 256), (1, 1, 256)]
    assert tuple(out["loc"].shape) == (1, 8732, 4) and tuple(out["logits"].shape) == (1, 8732, 21)


def test_pytorch_padding_pooling_and_head_order():
    det = Detector(num_classes=3, width=1 / 16)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0, 50, (2, 300, 300, 3)), tf.float32)
    out = det(x, return_features=True)
    f = {k: v.numpy().astype(np.float64) for k, v in out["features"].items()}
    # extras.3 is 3x3 stride 2 pad 1 on a 10x10 map: TF 'same' would pad (0, 1), PyTorch pads (1, 1).
    conv = det.extra_convs[3]
    ref = np.maximum(numpy_conv(f["extras_2"], conv.kernel.numpy(), conv.bias.numpy(), 2, 1), 0)
    np.testing.assert_allclose(f["extras_3"], ref, rtol=1e-4, atol=1e-4)
    # pool3 is ceil mode: 75 → 38, the last row/column pooling a 1-wide window.
    pre = f["vgg_15"]
    assert f["vgg_16"].shape[1] == 38
    np.testing.assert_allclose(f["vgg_16"][:, 37, 37], pre[:, 74, 74])
    np.testing.assert_allclose(f["vgg_16"][:, 0, 0], pre[:, :2, :2].max(axis=(1, 2)))
    # pool5 is 3x3/1/1: a corner sees a 2x2 window.
    np.testing.assert_allclose(f["vgg_30"][:, 0, 0], f["vgg_29"][:, :2, :2].max(axis=(1, 2)))
    # Head order: prior index = source, row, column, anchor; logits channel = anchor·C + class.
    head = det.conf_heads[1]
    src = out["sources"][1].numpy().astype(np.float64)
    ref = numpy_conv(src, head.kernel.numpy(), head.bias.numpy(), 1, 1)  # [2, 19, 19, 6·3]
    row, col, anchor = 4, 7, 5
    prior = 38 * 38 * 4 + (row * 19 + col) * 6 + anchor
    np.testing.assert_allclose(out["logits"].numpy()[:, prior], ref[:, row, col, anchor * 3 : anchor * 3 + 3],
                               rtol=1e-4, atol=1e-3)


def test_too_small_image_is_refused():
    with pytest.raises(ValueError, match="too small"):
        feature_map_sizes(64)
    with pytest.raises(ValueError, match="boxes_per_location"):
        Detector(num_classes=3, extras=((256, 1, 1, 0), (512, 3, 2, 1)))



@pytest.mark.skipif(not grouped_conv_supported((3, 3), (1, 1), (1, 1)), reason="grouped convolutions need oneDNN")
@pytest.mark.parametrize("cfr", [False, True], ids=["plain", "cfr"])
def test_grouped_aaconv_detector_stays_folded_and_computes_the_layer_by_layer_numbers(cfr):
    """With every AAconv grouped the batch stays folded into the channels from input to heads: the traced graph
    holds one transpose per convolution (its mixed kernels) plus the input's, the heads' and CFR's, not two more per
    layer for the activations; outputs are bitwise the layer-by-layer ones (features requested), gradients equal
    up to float summation order."""
    tf.random.set_seed(0)
    model = RobustDet(**TINY_SSD, aid_width=4, cfr=cfr, aaconv_implementation="grouped")
    detector = model.detector
    x = model.preprocess(tf.random.uniform([3, 64, 64, 3], 0, 255, seed=1))
    pi = tf.nn.softmax(tf.random.normal([3, 4], seed=2))
    assert detector._runs_folded(pi, return_features=False) and not detector._runs_folded(pi, return_features=True)
    graph = tf.function(lambda x, pi: detector(x, pi=pi)["logits"]).get_concrete_function(x, pi).graph
    transposes = sum(op.type == "Transpose" for op in graph.get_operations())
    convs = len(detector.all_convs()) + cfr  # CFR's layer holds two convolutions
    heads = len(detector.loc_heads) + len(detector.conf_heads)
    cfr_layer = 6 if cfr else 0  # unfolded around CFR's layer, whose two convolutions fold and unfold each
    assert transposes <= convs + 1 + heads + cfr_layer, transposes  # layer by layer: 2 more per convolution

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        folded = detector(x, pi=pi)
        by_layer = detector(x, pi=pi, return_features=True)
        losses = [tf.reduce_sum(out["logits"] ** 2) + tf.reduce_sum(out["loc"] ** 2) for out in (folded, by_layer)]
    for key in ("loc", "logits"):
        np.testing.assert_array_equal(folded[key].numpy(), by_layer[key].numpy())
    sources = [x, *detector.trainable_variables]
    for got, want in zip(tape.gradient(losses[0], sources), tape.gradient(losses[1], sources)):
        if want is not None:
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-5 * np.abs(want.numpy()).max())
