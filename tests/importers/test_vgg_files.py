"""Issue 28: ``backbone_init`` takes the VGG16 files people have, by content: one random VGG16 written in every
real layout (Keras 3 ``.weights.h5`` and Keras 2 ``.h5``, each with and without the classifier; torchvision's state
dict as ``.pth`` and ``.npz``; ``.npz`` in Keras naming) gives the same trunk after conversion."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robustdet_tf.importers import backbone, vgg_files  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402

pytestmark = pytest.mark.slow  # among the slowest files of the suite; the quick loop (-m "not slow") leaves it out

SIZE = 288  # the SSD300 layout's extras need a large enough input
TORCHVISION_MEAN = np.array((0.485, 0.456, 0.406))
TORCHVISION_STD = np.array((0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def weights():
    """A random VGG16 in Keras layout: 13 convolutions and fc1/fc2 (non-zero biases)."""
    rng = np.random.default_rng(0)
    convs, cin = [], 3
    for cout in vgg_files.CHANNELS:
        convs.append((rng.normal(0, 0.05, (3, 3, cin, cout)).astype(np.float32),
                      rng.normal(0, 0.05, cout).astype(np.float32)))
        cin = cout
    fc1 = (rng.normal(0, 0.01, (7 * 7 * 512, 4096)).astype(np.float32), rng.normal(0, 0.05, 4096).astype(np.float32))
    fc2 = (rng.normal(0, 0.01, (4096, 4096)).astype(np.float32), rng.normal(0, 0.05, 4096).astype(np.float32))
    return {"convs": convs, "fc1": fc1, "fc2": fc2}


def _keras3_file(weights, path, top):
    vgg = keras.applications.VGG16(weights=None, include_top=top)
    for name, pair in zip(vgg_files.KERAS_LAYERS, weights["convs"]):
        vgg.get_layer(name).set_weights(list(pair))
    if top:
        vgg.get_layer("fc1").set_weights(list(weights["fc1"]))
        vgg.get_layer("fc2").set_weights(list(weights["fc2"]))
    vgg.save_weights(path)
    return path


def _keras2_file(weights, path, top, extra=()):
    """The layout of Keras 2's files (``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``): one group per layer
    with ``weight_names``, each weight at ``<layer>/<layer>/kernel:0``."""
    layers = dict(zip(vgg_files.KERAS_LAYERS, weights["convs"]))
    if top:
        layers.update(fc1=weights["fc1"], fc2=weights["fc2"])
    layers.update(extra)
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [n.encode() for n in ("input_1", "block1_pool", *layers)]
        handle.create_group("input_1").attrs["weight_names"] = []
        for name, (kernel, bias) in layers.items():
            group = handle.create_group(name)
            group.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            group.create_dataset(f"{name}/kernel:0", data=kernel)
            group.create_dataset(f"{name}/bias:0", data=bias)
    return path


def _torchvision_state(weights):
    """The same network as torchvision's vgg16 holds it: OIHW kernels, RGB input scaled by its mean and std (the first
    convolution rewritten so it computes what the Keras one computes), fc6 inputs in (channel, y, x) order."""
    state = {}
    kernel, bias = weights["convs"][0]
    rgb = kernel[:, :, ::-1, :].astype(np.float64)  # Keras' input is BGR
    keras_mean_rgb = np.array(backbone.KERAS_IMAGENET_MEAN_BGR[::-1])
    folded = bias + np.einsum("hwco,c->o", rgb, 255 * TORCHVISION_MEAN - keras_mean_rgb)
    scaled = rgb * (255 * TORCHVISION_STD)[None, None, :, None]
    convs = [(scaled.astype(np.float32), folded.astype(np.float32)), *weights["convs"][1:]]
    for index, (k, b) in zip(vgg_files.TORCH_INDICES, convs):
        state[f"features.{index}.weight"] = np.transpose(k, (3, 2, 0, 1)).copy()
        state[f"features.{index}.bias"] = b
    fc6 = weights["fc1"][0].reshape(7, 7, 512, 4096).transpose(3, 2, 0, 1).reshape(4096, -1)
    state["classifier.0.weight"], state["classifier.0.bias"] = fc6.copy(), weights["fc1"][1]
    state["classifier.3.weight"], state["classifier.3.bias"] = weights["fc2"][0].T.copy(), weights["fc2"][1]
    state["classifier.6.weight"] = np.zeros((1000, 4096), np.float32)  # fc8: not used
    state["classifier.6.bias"] = np.zeros(1000, np.float32)
    return state


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vgg")
    out = {
        "keras3_top": _keras3_file(weights, str(folder / "with_top.weights.h5"), True),
        "keras3_notop": _keras3_file(weights, str(folder / "no_top.weights.h5"), False),
        "keras2_top": _keras2_file(weights, str(folder / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"), True),
        "keras2_notop": _keras2_file(weights, str(folder / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                                     False),
    }
    keras_named = {f"{name}/{part}": array for name, pair in zip(vgg_files.KERAS_LAYERS, weights["convs"])
                   for part, array in zip(("kernel", "bias"), pair)}
    keras_named.update({"fc1/kernel": weights["fc1"][0], "fc1/bias": weights["fc1"][1],
                        "fc2/kernel": weights["fc2"][0], "fc2/bias": weights["fc2"][1]})
    out["npz_keras"] = str(folder / "keras_names.npz")
    np.savez(out["npz_keras"], **keras_named)
    state = _torchvision_state(weights)
    out["npz_torchvision"] = str(folder / "torch_names.npz")
    np.savez(out["npz_torchvision"], **state)
    torch = pytest.importorskip("torch")
    out["torchvision_pth"] = str(folder / "vgg16-397923af.pth")  # torchvision's file name
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, out["torchvision_pth"])
    return out


def _trunk(path):
    keras.utils.set_random_seed(7)  # the same initial weights for every model: a notop file leaves conv6/conv7 so
    model = SSD(num_classes=3, image_size=SIZE, width=1.0)
    model.build()
    described = backbone.start_backbone(model, path)
    convs = model.detector.all_convs()
    return model, {name: (convs[name].kernel.numpy(), convs[name].bias.numpy()) for name in backbone.TRUNK}, described


def _first_conv_interior(model, images):
    features = model.detector(model.preprocess(images), return_features=True)["features"]
    return keras.ops.convert_to_numpy(features["vgg_1"])[:, 1:-1, 1:-1]


def test_every_format_gives_the_same_trunk(files):
    images = np.random.default_rng(1).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    reference_model, reference, _ = _trunk(files["keras2_top"])
    want = _first_conv_interior(reference_model, images)
    for kind in ("keras3_top", "npz_keras", "npz_torchvision", "torchvision_pth"):
        model, trunk, described = _trunk(files[kind])
        for name in backbone.TRUNK[1:]:  # conv1_2 … conv5_3, conv6, conv7: the same arrays
            np.testing.assert_array_equal(trunk[name][0], reference[name][0], err_msg=f"{kind} {name}")
            np.testing.assert_array_equal(trunk[name][1], reference[name][1], err_msg=f"{kind} {name}")
        # The first convolution computes the same function of the model's input (torchvision's scale and mean
        # folded in; exact wherever no zero padding is involved).
        np.testing.assert_allclose(_first_conv_interior(model, images), want, rtol=1e-4, atol=1e-3,
                                   err_msg=kind)
        assert "conv6/conv7 (fc6/fc7 subsampled)" in described, described


def test_files_without_the_classifier_start_conv6_conv7_at_the_documented_default(files):
    _, top, _ = _trunk(files["keras2_top"])
    _, fresh, described = _trunk("none")
    assert described == "none"
    keras.utils.set_random_seed(7)  # as _trunk: the draw follows the run's seed
    model = SSD(num_classes=3, image_size=SIZE, width=1.0)
    model.build()
    default = backbone.default_conv67(model)
    for kind in ("keras2_notop", "keras3_notop"):
        _, trunk, described = _trunk(files[kind])
        assert "without the classifier" in described and backbone.CONV6_DEFAULT in described, described
        for name in backbone.TRUNK[:13]:
            np.testing.assert_array_equal(trunk[name][0], top[name][0], err_msg=f"{kind} {name}")
        for name in (backbone.CONV6, backbone.CONV7):
            kernel, bias = trunk[name]
            np.testing.assert_array_equal(kernel, default[name][0], err_msg=f"{kind} {name}")
            np.testing.assert_array_equal(bias, default[name][1], err_msg=f"{kind} {name}")
            # PyTorch's start of a new convolution: kernel and bias uniform in ±1/√fan_in (std bound/√3), not the
            # layers' Glorot initialiser (√2× that std in conv6, √3× in conv7) and its zero bias.
            bound = 1.0 / np.sqrt(np.prod(kernel.shape[:-1]))
            assert np.abs(kernel).max() <= bound * (1 + 1e-6) and np.abs(bias).max() <= bound * (1 + 1e-6)  # float32
            np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.01, err_msg=name)
            np.testing.assert_allclose(bias.std(), bound / np.sqrt(3), rtol=0.1, err_msg=name)
            assert np.std(fresh[name][0]) > 1.3 * kernel.std() and not np.any(fresh[name][1])


def test_unusable_files_name_what_was_found_what_was_expected_and_the_formats(weights, tmp_path):
    vgg19 = _keras2_file(weights, str(tmp_path / "vgg19.h5"), True,
                         extra={"block5_conv4": weights["convs"][-1]})
    other = str(tmp_path / "resnet.npz")
    np.savez(other, **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.bias": np.zeros(10, np.float32)})
    narrow = str(tmp_path / "narrow.npz")
    np.savez(narrow, **{f"block{i}": np.zeros(1) for i in range(2)}, **{
        f"{name}/kernel": np.zeros((3, 3, 3, 8), np.float32) for name in vgg_files.KERAS_LAYERS},
        **{f"{name}/bias": np.zeros(8, np.float32) for name in vgg_files.KERAS_LAYERS})
    cases = {vgg19: "a VGG19, not a VGG16", other: "found the keys ['conv1.weight', 'fc.bias']",
             narrow: "found the keys ['block0', 'block1', ", str(tmp_path / "absent.h5"): "no such file"}
    for path, found in cases.items():
        with pytest.raises(backbone.BackboneWeightsError) as info:
            backbone.start_backbone(SSD(num_classes=3, image_size=SIZE), path)
        message = str(info.value)
        assert found in message and "Accepted" in message and "vgg16_reducedfc.pth" in message, message
        assert backbone.KERAS_VGG16_URL not in message  # download advice only when no file was given
    np.savez(narrow, **{f"{name}/kernel": np.zeros((3, 3, 3, 8), np.float32) for name in vgg_files.KERAS_LAYERS},
             **{f"{name}/bias": np.zeros(8, np.float32) for name in vgg_files.KERAS_LAYERS})
    with pytest.raises(backbone.BackboneWeightsError, match=r"not shaped as VGG16: block1_conv1: \(3, 3, 3, 8\)"):
        backbone.start_backbone(SSD(num_classes=3, image_size=SIZE), narrow)
