"""Import of the official PyTorch checkpoints: names, layouts and numerics against an independent NCHW reference.

``official_state_dict_keys.txt`` is the key/shape listing read off the official models (a copy of the project's
spec file).  ``official_reference`` rebuilds those shapes for any config and runs the official forward passes in
numpy, so an imported model must reproduce them number for number.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustdet_tf.importers import torch_import as ti  # noqa: E402
from robustdet_tf.models.robustdet import RobustDet  # noqa: E402
from robustdet_tf.models.ssd import SSD  # noqa: E402
from tests.conftest import TINY_SSD  # noqa: E402
from tests.importers import official_reference as ref  # noqa: E402

KEYS_FILE = os.path.join(os.path.dirname(__file__), "official_state_dict_keys.txt")
SSD300_VOC = dict(
    num_classes=21,
    width=1.0,
    extras=((256, 1, 1, 0), (512, 3, 2, 1), (128, 1, 1, 0), (256, 3, 2, 1), (128, 1, 1, 0), (256, 3, 1, 0),
            (128, 1, 1, 0), (256, 3, 1, 0)),
    aspect_ratios=((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)),
)
TINY_ROBUST = dict(aid_width=8, decoder_width=16)


def official_listing() -> dict[str, dict[str, tuple]]:
    """Section title → ordered {key: shape} from the official listing."""
    sections, current = {}, None
    with open(KEYS_FILE) as f:
        for line in f:
            line = line.strip()
            if line.startswith("## "):
                current = sections.setdefault(line[3:].split(" (")[0].split(" K=")[0], {})
            elif line and not line.startswith("#"):
                key, shape = line.split(" ", 1)
                current[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return sections


def _images(batch=2, size=64, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)


def _tiny_robust_state(seed=2, cfr=True, images=None):
    """Synthetic RobustDet(*) state dict whose AID gives a non-degenerate mixture on ``images``."""
    state = ref.synthesize(ref.official_shapes(TINY_SSD, 4, cfr, 8, 16), seed=seed)
    if images is not None:  # scale the fresh fc so the softmax is neither uniform nor one-hot
        feats = ref.resnet18_features(state, ref.to_nchw(images))
        state["disc.base_net.fc.weight"] *= 4.0 / np.abs(feats).max()
    return state


def _assert_close(got, want, what, rel=1e-5):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=rel * scale, rtol=0, err_msg=what)


# ------------------------------------------------------------------------------------------ official listing
def test_full_ssd300_voc_checkpoint_loads_exactly_and_round_trips():
    """The one full-size build of this file: every key and shape of ssd300_mAP_77.43_v2.pth's listing."""
    listing = official_listing()["ssd300 VOC"]
    assert ref.official_shapes(SSD300_VOC) == listing  # the reference helper reproduces the official listing
    assert sum(int(np.prod(s)) for s in listing.values()) == 26_285_486  # docs/reference.md#parameter-counts
    state = ref.synthesize(listing, seed=5)
    model = SSD()
    ti.load_state_dict(model, state)

    conv1 = model.detector.vgg_convs["vgg_0"]
    np.testing.assert_array_equal(conv1.kernel.numpy(), state["vgg.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.detector.l2norm.weight.numpy(), state["L2Norm.weight"])
    conf5 = model.detector.conf_heads[5]
    np.testing.assert_array_equal(conf5.bias.numpy(), state["conf.5.bias"])

    patch = np.random.default_rng(1).normal(0, 50, (1, 8, 8, 3)).astype(np.float32)
    want = ref.conv2d(patch.transpose(0, 3, 1, 2).astype(np.float64), state["vgg.0.weight"], state["vgg.0.bias"])
    _assert_close(conv1(patch).numpy().transpose(0, 3, 1, 2), want, "vgg.0 conv")
    dilated = model.detector.vgg_convs["vgg_31"]  # conv6, dilation 6: needs a 13x13 input after padding
    x = np.random.default_rng(2).normal(0, 1, (1, 15, 15, 512)).astype(np.float32)
    want = ref.conv2d(x.transpose(0, 3, 1, 2).astype(np.float64), state["vgg.31.weight"], state["vgg.31.bias"],
                      dilation=6)
    _assert_close(dilated(x).numpy().transpose(0, 3, 1, 2), want, "vgg.31 dilated conv")

    back = ti.to_state_dict(model)
    assert list(back) == list(listing)  # same keys, same order as the official state dict
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_robustdet_keys_match_official_listing():
    """RobustDet / RobustDet*: the reference helper gives both official listings at full width, and our RobustDet*
    (narrow detector, full-width AID and decoder, all SSD300 sources) exports exactly the helper's keys and shapes.
    (The non-CFR key set of our model is checked at tiny size in the expansion test.)"""
    sections = official_listing()
    assert ref.official_shapes(SSD300_VOC, 4, False, 64, 512) == sections["RobustDet"]
    listing = sections["RobustDet*"]
    assert ref.official_shapes(SSD300_VOC, 4, True, 64, 512) == listing
    narrow = {**SSD300_VOC, "width": 1 / 16}
    model = RobustDet(**narrow, cfr=True, aid_width=64, decoder_width=512)
    ours = {k: v.shape for k, v in ti.to_state_dict(model).items()}
    assert ours == ref.official_shapes(narrow, 4, True, 64, 512)
    assert [k for k in ours if not k.startswith("disc.")] == [k for k in listing if not k.startswith("disc.")]
    for key in listing:
        if key.startswith("disc.") or (key.startswith("decoder.") and key != "decoder.0.weight"):
            assert ours[key] == listing[key], key  # width-independent parts at full size


# ------------------------------------------------------------------------------------------------- numerics
@pytest.fixture(scope="module")
def robust_star():
    """One tiny RobustDet* for the tests below; each loads the complete state it needs (or fails before assigning)."""
    model = RobustDet(**TINY_SSD, **TINY_ROBUST, cfr=True, seed=1)
    model.build()
    return model


def test_tiny_ssd_import_matches_numpy_reference():
    state = ref.synthesize(ref.official_shapes(TINY_SSD), seed=1)
    model = ti.load_state_dict(SSD(**TINY_SSD), state)
    images = _images()
    loc, logits, _ = ref.ssd_forward(state, images, TINY_SSD)
    out = model(images, training=False)
    assert out["loc"].shape == loc.shape == (2, 368, 4)
    _assert_close(out["loc"].numpy(), loc, "loc")
    _assert_close(out["logits"].numpy(), logits, "logits")


def test_tiny_robustdet_star_import_matches_numpy_reference(robust_star):
    """AID mixture, dynamic convolutions, CFR log-variance and the decoder (ConvTranspose layout) all agree."""
    images = _images(seed=3)
    state = _tiny_robust_state(images=images)
    model = ti.load_state_dict(robust_star, state)
    pi = ref.aid_forward(state, images)
    assert np.abs(pi[0] - pi[1]).max() > 1e-3 and pi.max() < 0.99  # a mixture that tells images apart
    out = model(images, training=False)
    _assert_close(out["pi"].numpy(), pi, "pi")
    loc, logits, aux = ref.ssd_forward(state, images, TINY_SSD, pi=pi)
    _assert_close(out["loc"].numpy(), loc, "loc")
    _assert_close(out["logits"].numpy(), logits, "logits")
    _assert_close(out["logvar"].numpy(), aux["logvar"].transpose(0, 2, 3, 1), "logvar")
    _assert_close(out["mu"].numpy(), aux["mu"].transpose(0, 2, 3, 1), "mu")

    z = np.random.default_rng(4).normal(0, 1, (1, 8, 8, 32)).astype(np.float32)
    want = ref.decoder_forward(state, z.transpose(0, 3, 1, 2).astype(np.float64)).transpose(0, 2, 3, 1)
    _assert_close(model.decoder(z, training=False).numpy(), want, "decoder", rel=1e-4)


def test_round_trip_is_exact_and_has_the_official_key_set(robust_star):
    model = robust_star
    images = _images(seed=5)
    weights = [w.numpy().copy() for w in model.weights]
    outputs = model(images, training=False)
    state = ti.to_state_dict(model)  # our model -> state dict
    assert {k: v.shape for k, v in state.items()} == ref.official_shapes(TINY_SSD, 4, True, 8, 16)
    assert state["disc.base_net.bn1.num_batches_tracked"].dtype == np.int64

    other = _tiny_robust_state(seed=12)
    ti.load_state_dict(model, other)
    assert not np.array_equal(model.detector.vgg_convs["vgg_0"].kernel.numpy(), weights[0])
    back = ti.to_state_dict(model)  # state dict -> our model -> state dict
    assert list(back) == list(state)
    for key in other:
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], other[key], err_msg=key)

    ti.load_state_dict(model, state)  # -> our model again: bit-identical weights and outputs
    for before, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(variable.numpy(), before, err_msg=variable.path)
    again = model(images, training=False)
    for key in ("loc", "logits", "pi", "logvar"):
        np.testing.assert_array_equal(again[key].numpy(), outputs[key].numpy(), err_msg=key)


def test_mismatched_checkpoints_are_refused_naming_every_key(robust_star):
    model = SSD(**TINY_SSD)
    model.build()
    before = [w.numpy().copy() for w in model.weights]
    state = ref.synthesize(ref.official_shapes(TINY_SSD), seed=1)
    state["extras.1.weight"] = state["extras.1.weight"][:, :-1]
    state["vgg.99.weight"] = np.zeros((1,), np.float32)
    del state["conf.2.bias"]
    with pytest.raises(ti.CheckpointMismatchError) as err:
        ti.load_state_dict(model, state)
    message = str(err.value)
    for expected in ("vgg.99.weight", "conf.2.bias", "extras.1.weight", "(32, 15, 3, 3)", "(32, 16, 3, 3)"):
        assert expected in message, expected
    for a, b in zip(before, model.weights):  # nothing was assigned
        np.testing.assert_array_equal(a, b.numpy())

    with pytest.raises(ti.CheckpointMismatchError, match="--mode=import expands a clean SSD checkpoint") as err:
        ti.load_state_dict(robust_star, ref.synthesize(ref.official_shapes(TINY_SSD), seed=1))
    message = str(err.value)
    assert "156 missing key(s): vgg.21.conv_mean.weight" in message
    assert "vgg.0.weight: checkpoint (4, 3, 3, 3)" in message
    assert " more" in message and len(message) < 2000  # a few keys of each kind, not the whole model's list


def test_the_import_command_expands_a_clean_ssd_checkpoint_given_a_robustdet_config(tmp_path):
    from ml_collections import ConfigDict

    from robustdet_tf import cli

    state = ref.synthesize(ref.official_shapes(TINY_SSD), seed=8)
    np.savez(tmp_path / "ssd.npz", **state)
    config = ConfigDict({"model": {"kind": "robustdet", **TINY_SSD, **TINY_ROBUST}, "train": {"steps": 1}})
    printed = []
    path = cli.run_import(config, str(tmp_path / "run"), str(tmp_path / "ssd.npz"), printer=printed.append)
    assert "is a clean SSD checkpoint: expanded into the configured RobustDet" in printed[0]
    robust = keras.saving.load_model(path)
    images = _images(seed=9)
    _, logits, _ = ref.ssd_forward(state, images, TINY_SSD)
    _assert_close(robust(images, training=False)["logits"].numpy(), logits, "expanded logits")


def test_torchvision_resnet18_goes_into_the_aid_without_its_fc(robust_star):
    images = _images(seed=6)
    shapes = ref.official_shapes(TINY_SSD, 4, False, 8, 16)
    prefix = "disc.base_net."
    resnet = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix) and ".fc." not in k}
    resnet.update({"fc.weight": (1000, 64), "fc.bias": (1000,)})
    state = ref.synthesize(resnet, seed=7)
    model = robust_star
    fc_before = model.aid.get_layer("fc").kernel.numpy().copy()
    aid = ti.load_torchvision_resnet18(model, state)
    assert aid is model.aid
    np.testing.assert_array_equal(aid.get_layer("fc").kernel.numpy(), fc_before)
    features = keras.Model(aid.input, aid.get_layer("avgpool").output)
    x = (images - ref.MEAN_RGB).astype(np.float32)
    _assert_close(features(x, training=False).numpy(), ref.resnet18_features(state, ref.to_nchw(images), ""),
                  "pooled features")

    del state["layer3.1.bn2.running_var"]
    with pytest.raises(ti.CheckpointMismatchError, match=r"1 missing key\(s\): layer3.1.bn2.running_var\."):
        ti.load_torchvision_resnet18(model, state)


def test_import_checkpoint_reads_npz_unwraps_and_expands_a_clean_ssd(tmp_path):
    state = ref.synthesize(ref.official_shapes(TINY_SSD), seed=8)
    path = tmp_path / "ssd.npz"
    np.savez(path, **{f"module.{k}": v for k, v in state.items()})  # as saved from nn.DataParallel
    ssd = ti.import_checkpoint(path, {"kind": "ssd", **TINY_SSD})
    images = _images(seed=9)
    loc, logits, _ = ref.ssd_forward(state, images, TINY_SSD)
    _assert_close(ssd(images, training=False)["logits"].numpy(), logits, "logits")
    assert ti.read_state_dict({"state_dict": state}).keys() == state.keys()

    aid_state = {k[len("disc.base_net."):]: v for k, v in
                 ref.synthesize(ref.official_shapes(TINY_SSD, 4, False, 8, 16), seed=9).items()
                 if k.startswith("disc.base_net.") and ".fc." not in k}
    robust = ti.import_checkpoint(path, {"kind": "robustdet", **TINY_SSD, **TINY_ROBUST, "adc": 4},
                                  expand_clean_ssd=True, aid_checkpoint=aid_state)
    assert isinstance(robust, RobustDet) and not robust.cfr and robust.adc == 4
    assert {k: v.shape for k, v in ti.to_state_dict(robust).items()} == ref.official_shapes(TINY_SSD, 4, False, 8, 16)
    np.testing.assert_array_equal(robust.aid.get_layer("conv1").kernel.numpy(),
                                  aid_state["conv1.weight"].transpose(2, 3, 1, 0))
    for pi in ([[1.0, 0, 0, 0], [0, 0, 0.5, 0.5]], [[0.1, 0.2, 0.3, 0.4], [0, 1.0, 0, 0]]):
        out = robust(images, pi=tf.constant(pi), training=False)  # docs/reference.md#expanding-a-clean-ssd: equals
                                                                  # the clean SSD for any pi
        _assert_close(out["loc"].numpy(), loc, "expanded loc")
        _assert_close(out["logits"].numpy(), logits, "expanded logits")
    with pytest.raises(ValueError, match="kind='robustdet'"):
        ti.import_checkpoint(path, {"kind": "ssd", **TINY_SSD}, expand_clean_ssd=True)


# ---------------------------------------------------------------------------------------------------- torch
def test_torch_checkpoint_matches_torch_reference(tmp_path, robust_star):
    """A real .pth through torch.load, against the reference's own math in torch: F.conv2d on NCHW, the grouped
    DynamicConv2d trick, ceil-mode pooling, ConvTranspose2d with output_padding and eval BatchNorm."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    images = _images(seed=10)
    state = _tiny_robust_state(seed=11, images=images)
    path = tmp_path / "robustdet_star.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
    model = ti.load_state_dict(robust_star, path)  # read with torch.load(weights_only=True)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}

    x = torch.from_numpy(ref.to_nchw(images).astype(np.float32))
    pi = torch.from_numpy(model(images, training=False)["pi"].numpy())
    _assert_close(pi.numpy(), ref.aid_forward(state, images), "pi")

    def dyn(name, h, padding=0, stride=1, dilation=1):  # the reference's DynamicConv2d: batch folded, groups = B
        w, b = t[f"{name}.weight"], t[f"{name}.bias"]
        batch, k = pi.shape
        agg_w = (pi @ w.reshape(k, -1)).reshape(batch * w.shape[1], *w.shape[2:])
        agg_b = (pi @ b).reshape(-1)
        y = F.conv2d(h.reshape(1, -1, *h.shape[2:]), agg_w, agg_b, stride, padding, dilation, groups=batch)
        return y.reshape(batch, w.shape[1], *y.shape[2:])

    sources, h = [], x
    for index, kind, arg in ref.vgg_modules(TINY_SSD["width"]):
        if kind == "conv":
            name = f"vgg.{index}.conv_mean" if index == 21 else f"vgg.{index}"
            h = dyn(name, h, padding=arg[2], dilation=arg[3])
        elif kind == "relu":
            h = F.relu(h)
        else:
            h = F.max_pool2d(h, 3, 1, 1) if kind == "pool5" else F.max_pool2d(h, 2, 2, ceil_mode=kind == "pool_ceil")
        if index == 22:
            sources.append(t["L2Norm.weight"][None, :, None, None] * h / (h.pow(2).sum(1, keepdim=True) + 1e-10).sqrt())
    sources.append(h)
    for i, (_, _, stride, pad) in enumerate(TINY_SSD["extras"]):
        h = F.relu(dyn(f"extras.{i}", h, padding=pad, stride=stride))
        if i % 2 == 1:
            sources.append(h)
    loc = torch.cat([dyn(f"loc.{i}", s, 1).permute(0, 2, 3, 1).reshape(2, -1) for i, s in enumerate(sources)], 1)
    conf = torch.cat([dyn(f"conf.{i}", s, 1).permute(0, 2, 3, 1).reshape(2, -1) for i, s in enumerate(sources)], 1)
    out = model(images, training=False)
    _assert_close(out["loc"].numpy(), loc.view(2, -1, 4).numpy().astype(np.float64), "loc vs torch")
    _assert_close(out["logits"].numpy(), conf.view(2, -1, 4).numpy().astype(np.float64), "logits vs torch")

    z = torch.randn(1, 32, 8, 8, generator=torch.Generator().manual_seed(0))
    d = z
    for index, kind in [(0, "same"), (3, "up"), (6, "valid"), (9, "up"), (12, "valid"), (15, "valid"),
                        (18, "same"), (21, "up")]:
        w, b = t[f"decoder.{index}.weight"], t[f"decoder.{index}.bias"]
        if kind == "up":
            d = F.conv_transpose2d(d, w, b, stride=2, padding=0, output_padding=1)
        else:
            d = F.conv2d(d, w, b, padding=1 if kind == "same" else 0)
        bn = f"decoder.{index + 1}"
        d = F.batch_norm(d, t[f"{bn}.running_mean"], t[f"{bn}.running_var"], t[f"{bn}.weight"], t[f"{bn}.bias"],
                         training=False, eps=1e-5)
        d = F.leaky_relu(d, 0.01)
    d = 160 * torch.tanh(F.conv2d(d, t["decoder.24.weight"], t["decoder.24.bias"]))
    ours = model.decoder(z.permute(0, 2, 3, 1).numpy(), training=False).numpy()
    _assert_close(ours, d.permute(0, 2, 3, 1).numpy().astype(np.float64), "decoder vs torch", rel=1e-4)
