"""The ImageNet VGG16 start: Keras' VGG16 mapped onto the trunk (channels, mean, reduced fc) and ssd.pytorch's
vgg16_reducedfc.pth, checked exactly with random weights in each layout."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from robustdet_tf.importers import backbone  # noqa: E402
from robustdet_tf.models.robustdet import RobustDet  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402

SIZE = 288  # every pooling divides evenly, so Keras' floor pools and our ceil-mode pool3 agree
KERAS_MEAN_RGB = backbone.KERAS_IMAGENET_MEAN_BGR[::-1]


@pytest.fixture(scope="module")
def random_vgg16():
    """Keras' VGG16 (with fc1/fc2) holding random weights and non-zero biases, in Keras' own layout."""
    keras.utils.set_random_seed(0)
    vgg = keras.applications.VGG16(weights=None, include_top=True)
    rng = np.random.default_rng(0)
    for layer in vgg.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.05, bias.shape).astype(np.float32)])
    return vgg


def _keras_input(images_rgb):
    return images_rgb[..., ::-1] - np.array(backbone.KERAS_IMAGENET_MEAN_BGR, np.float32)


def _keras_up_to(vgg, last: str, images):
    """Keras VGG16's layers up to ``last`` applied to ``images`` of any size (the classifier fixes only 224²)."""
    h = images
    for layer in vgg.layers[1:]:
        h = layer(h)
        if layer.name == last:
            return keras.ops.convert_to_numpy(h)
    raise KeyError(last)


def _features(model, images):
    return model.detector(model.preprocess(images), return_features=True)["features"]


def test_reduced_fc_subsamples_fc6_and_fc7_exactly():
    rng = np.random.default_rng(1)
    fc6 = rng.normal(size=(7 * 7 * 512, 4096)).astype(np.float32)
    fc7 = rng.normal(size=(4096, 4096)).astype(np.float32)
    b6, b7 = rng.normal(size=4096).astype(np.float32), rng.normal(size=4096).astype(np.float32)
    arrays = backbone.reduced_fc(fc6, b6, fc7, b7)
    conv6, conv6_bias = arrays[backbone.CONV6]
    conv7, conv7_bias = arrays[backbone.CONV7]
    assert conv6.shape == (3, 3, 512, 1024) and conv7.shape == (1, 1, 1024, 1024)
    for y, x, c, o in [(0, 0, 0, 0), (2, 1, 300, 1023), (1, 2, 511, 7)]:  # tap (y, x) is fc6's (3y, 3x)
        assert conv6[y, x, c, o] == fc6[((3 * y) * 7 + 3 * x) * 512 + c, 4 * o]
    np.testing.assert_array_equal(conv6_bias, b6[::4])
    np.testing.assert_array_equal(conv7[0, 0], fc7[::4, ::4])
    np.testing.assert_array_equal(conv7_bias, b7[::4])


def test_keras_vgg16_features_are_reproduced_by_the_trunk(random_vgg16):
    """With Keras' mean the mapped trunk computes block5_conv3 exactly as Keras does (borders included); conv6 and
    conv7 hold the subsampled fc1/fc2."""
    model = SSD(num_classes=3, image_size=SIZE, mean=KERAS_MEAN_RGB)
    backbone.load_trunk(model, backbone.keras_vgg16_arrays(random_vgg16, model.mean), "random VGG16")
    images = np.random.default_rng(2).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    want = _keras_up_to(random_vgg16, "block5_conv3", _keras_input(images))
    got = keras.ops.convert_to_numpy(_features(model, images)["vgg_29"])
    assert got.shape == want.shape == (1, 18, 18, 512)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    fc1, fc2 = random_vgg16.get_layer("fc1").get_weights(), random_vgg16.get_layer("fc2").get_weights()
    convs = model.detector.all_convs()
    np.testing.assert_array_equal(convs["vgg_31"].kernel.numpy(), fc1[0].reshape(7, 7, 512, 4096)[::3, ::3, :, ::4])
    np.testing.assert_array_equal(convs["vgg_33"].kernel.numpy()[0, 0], fc2[0][::4, ::4])


def test_reference_mean_is_folded_into_the_first_bias(random_vgg16):
    """The reference subtracts (104, 117, 123) from RGB: the first convolution still equals Keras' on the interior
    (the mean difference moved into its bias); only the zero-padded border differs."""
    model = SSD(num_classes=3, image_size=SIZE)
    assert model.mean == (104.0, 117.0, 123.0)
    backbone.load_trunk(model, backbone.keras_vgg16_arrays(random_vgg16, model.mean), "random VGG16")
    images = np.random.default_rng(3).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    want = _keras_up_to(random_vgg16, "block1_conv1", _keras_input(images))
    got = keras.ops.convert_to_numpy(_features(model, images)["vgg_1"])
    np.testing.assert_allclose(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], rtol=1e-4, atol=1e-3)
    assert np.abs(got[:, 0] - want[:, 0]).max() > 1e-2  # the border sees other padded pixels


def _reducedfc_state(rng):
    """A state dict shaped like ssd.pytorch's vgg16_reducedfc.pth (PyTorch [out, in, kh, kw] layout)."""
    shapes = {}
    cin = 3
    for name, cout in zip(backbone.TRUNK[:13], (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
        shapes[name] = (cout, cin, 3, 3)
        cin = cout
    shapes[backbone.CONV6], shapes[backbone.CONV7] = (1024, 512, 3, 3), (1024, 1024, 1, 1)
    state = {}
    for name, shape in shapes.items():
        index = name.split("_")[1]
        state[f"{index}.weight"] = rng.normal(0, 0.01, shape).astype(np.float32)
        state[f"{index}.bias"] = rng.normal(0, 0.01, shape[0]).astype(np.float32)
    return state


def test_reducedfc_pth_loads_into_ssd_and_every_robustdet_kernel(tmp_path):
    state = _reducedfc_state(np.random.default_rng(4))
    assert backbone.is_vgg_backbone_state(state)
    path = tmp_path / "vgg16_reducedfc.npz"
    np.savez(path, **state)
    ssd = backbone.initialise_backbone(SSD(num_classes=3), str(path))
    robust = backbone.initialise_backbone(RobustDet(num_classes=3, num_kernels=2, aid_width=4), str(path))
    for name in backbone.TRUNK:
        index = name.split("_")[1]
        want = state[f"{index}.weight"].transpose(2, 3, 1, 0)
        np.testing.assert_array_equal(ssd.detector.all_convs()[name].kernel.numpy(), want)
        np.testing.assert_array_equal(ssd.detector.all_convs()[name].bias.numpy(), state[f"{index}.bias"])
        kernels = robust.detector.all_convs()[name].kernel.numpy()
        assert kernels.shape[0] == 2 and all(np.array_equal(k, want) for k in kernels)


def test_a_narrow_model_is_refused_naming_the_width_key_and_nothing_is_assigned():
    state = _reducedfc_state(np.random.default_rng(5))
    model = SSD(num_classes=3, width=0.125)
    model.build()
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(backbone.BackboneWeightsError, match="config.model.width=1.0"):
        backbone.load_trunk(model, backbone.reducedfc_arrays(state), "vgg16_reducedfc.pth")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_offline_imagenet_error_says_where_to_put_the_file(monkeypatch, tmp_path):
    import keras.src.applications.vgg16 as keras_vgg16_module

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(keras_vgg16_module.file_utils, "get_file", offline)
    with pytest.raises(backbone.BackboneWeightsError) as info:
        backbone.initialise_backbone(SSD(num_classes=3), "imagenet")
    message = str(info.value)
    assert os.path.join(str(tmp_path), "models", backbone.KERAS_VGG16_FILE) in message
    assert backbone.KERAS_VGG16_URL in message and "--config.model.backbone_init=" in message
    with pytest.raises(backbone.BackboneWeightsError, match="no such file"):
        backbone.initialise_backbone(SSD(num_classes=3), str(tmp_path / "missing.h5"))
    with pytest.raises(backbone.BackboneWeightsError, match="no such file, and not 'none' or 'imagenet'. Accepted"):
        backbone.initialise_backbone(SSD(num_classes=3), "imagenett")


def test_mode_import_of_vgg16_reducedfc_gives_a_fresh_model_on_that_trunk(tmp_path):
    from ml_collections import ConfigDict

    from robustdet_tf import cli

    state = _reducedfc_state(np.random.default_rng(6))
    path = tmp_path / "vgg16_reducedfc.npz"
    np.savez(path, **state)
    config = ConfigDict({"model": {"kind": "ssd", "num_classes": 3}, "train": {"steps": 1}})
    saved = cli.run_import(config, str(tmp_path / "run"), str(path), printer=lambda *_: None)
    model = keras.saving.load_model(saved)
    np.testing.assert_array_equal(model.detector.all_convs()["vgg_33"].kernel.numpy()[0, 0],
                                  state["33.weight"][:, :, 0, 0].T)
    assert np.abs(model.detector.all_convs()["loc_0"].kernel.numpy()).max() > 0  # heads keep their fresh init
