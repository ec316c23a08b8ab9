"""An independent NCHW numpy model of the official PyTorch networks, for the checkpoint-import tests.

Written from the reference's tables (docs/reference.md#the-detector, #aaconv), not from our Keras code: the official
state-dict shapes of a (scaled) config, a synthetic state dict with sensible magnitudes, and the forward passes of the
SSD (plain or dynamic convolutions, L2Norm, ceil-mode pool3, dilated conv6, head permute/flatten), torchvision's
ResNet-18 (the AID) and the CFR decoder (ConvTranspose with output_padding), all in PyTorch layout.  If an imported
Keras model computes the same numbers, names, layouts and orderings all agree.
"""

from __future__ import annotations

import numpy as np

VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512)
MEAN_RGB = np.array([104.0, 117.0, 123.0], np.float32)


def _bn_shapes(name: str, n: int, counters: bool) -> dict[str, tuple]:
    """A BatchNorm's four vectors (and, as PyTorch writes it, its ``num_batches_tracked`` counter)."""
    shapes = {f"{name}.{param}": (n,) for param in ("weight", "bias", "running_mean", "running_var")}
    if counters:
        shapes[f"{name}.num_batches_tracked"] = ()
    return shapes


def resnet18_state_shapes(width: int = 64, num_kernels: int = 4, prefix: str = "",
                          counters: bool = False) -> dict[str, tuple]:
    """State-dict keys and PyTorch shapes of torchvision's resnet18 with fc -> Linear(8*width, K), written out
    from torchvision's layout (independently of the Keras model); ``counters`` adds the BN step counters."""
    shapes = {prefix + "conv1.weight": (width, 3, 7, 7), **_bn_shapes(prefix + "bn1", width, counters)}
    in_ch = width
    for stage in range(1, 5):
        out_ch = width * 2 ** (stage - 1)
        for block in range(2):
            pre = f"{prefix}layer{stage}.{block}"
            shapes[f"{pre}.conv1.weight"] = (out_ch, in_ch, 3, 3)
            shapes.update(_bn_shapes(f"{pre}.bn1", out_ch, counters))
            shapes[f"{pre}.conv2.weight"] = (out_ch, out_ch, 3, 3)
            shapes.update(_bn_shapes(f"{pre}.bn2", out_ch, counters))
            if block == 0 and stage > 1:
                shapes[f"{pre}.downsample.0.weight"] = (out_ch, in_ch, 1, 1)
                shapes.update(_bn_shapes(f"{pre}.downsample.1", out_ch, counters))
            in_ch = out_ch
    shapes[prefix + "fc.weight"] = (num_kernels, 8 * width)
    shapes[prefix + "fc.bias"] = (num_kernels,)
    return shapes


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def vgg_modules(width: float) -> list[tuple[int, str, tuple]]:
    """(index, kind, (out, kernel, pad, dilation)) of the reference's ``vgg`` ModuleList (35 entries)."""
    modules = []
    for item in VGG_CFG:
        if item in ("M", "C"):
            modules.append((len(modules), "pool_ceil" if item == "C" else "pool", ()))
        else:
            modules.append((len(modules), "conv", (scaled(item, width), 3, 1, 1)))
            modules.append((len(modules), "relu", ()))
    modules.append((len(modules), "pool5", ()))
    modules.append((len(modules), "conv", (scaled(1024, width), 3, 6, 6)))
    modules.append((len(modules), "relu", ()))
    modules.append((len(modules), "conv", (scaled(1024, width), 1, 0, 1)))
    modules.append((len(modules), "relu", ()))
    return modules


def anchors_per_location(aspect_ratios) -> list[int]:
    return [2 + 2 * len(ars) for ars in aspect_ratios]


def official_shapes(
    config: dict,
    num_kernels: int | None = None,
    cfr: bool = False,
    aid_width: int = 64,
    decoder_width: int = 512,
) -> dict[str, tuple[int, ...]]:
    """Official key → PyTorch shape for an SSD config (``num_kernels`` None) or a RobustDet(*) (K leading dims,
    ``disc.base_net.*``, ``decoder.*``)."""
    width, num_classes = config["width"], config["num_classes"]
    k = () if num_kernels is None else (num_kernels,)
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, out, cin, kernel):
        shapes[f"{name}.weight"] = (*k, out, cin, kernel, kernel)
        shapes[f"{name}.bias"] = (*k, out)

    cin = 3
    conv43 = None
    for index, kind, arg in vgg_modules(width):
        if kind != "conv":
            continue
        out, kernel = arg[0], arg[1]
        if cfr and index == 21:
            conv(f"vgg.{index}.conv_mean", out, cin, kernel)
            conv(f"vgg.{index}.conv_std", out, cin, kernel)
        else:
            conv(f"vgg.{index}", out, cin, kernel)
        if index == 21:
            conv43 = out
        cin = out
    shapes["L2Norm.weight"] = (conv43,)
    source_channels = [conv43, cin]
    for i, (filters, kernel, _, _) in enumerate(config["extras"]):
        out = scaled(filters, width)
        conv(f"extras.{i}", out, cin, kernel)
        cin = out
        if i % 2 == 1:
            source_channels.append(out)
    anchors = anchors_per_location(config["aspect_ratios"])
    for i, (a, c) in enumerate(zip(anchors, source_channels)):
        conv(f"loc.{i}", a * 4, c, 3)
    for i, (a, c) in enumerate(zip(anchors, source_channels)):
        conv(f"conf.{i}", a * num_classes, c, 3)
    if num_kernels is None:
        return shapes

    shapes.update(resnet18_state_shapes(aid_width, num_kernels, prefix="disc.base_net.", counters=True))
    if cfr:
        w = decoder_width
        plan = [(0, "conv", conv43, w), (3, "convT", w, w // 2), (6, "conv", w // 2, w // 2),
                (9, "convT", w // 2, w // 4), (12, "conv", w // 4, w // 4), (15, "conv", w // 4, w // 8),
                (18, "conv", w // 8, w // 8), (21, "convT", w // 8, w // 16)]
        for index, kind, cin_, cout in plan:
            shapes[f"decoder.{index}.weight"] = (cout, cin_, 3, 3) if kind == "conv" else (cin_, cout, 3, 3)
            shapes[f"decoder.{index}.bias"] = (cout,)
            shapes.update(_bn_shapes(f"decoder.{index + 1}", cout, counters=True))
        shapes["decoder.24.weight"] = (3, w // 16, 3, 3)
        shapes["decoder.24.bias"] = (3,)
    return shapes


def synthesize(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors of the given shapes, scaled so activations stay O(1..100) through the whole network."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = np.array(int(rng.integers(0, 1000)), np.int64)
        elif key == "L2Norm.weight":
            state[key] = rng.uniform(5, 20, shape).astype(np.float32)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = rng.normal(0, 0.1, shape).astype(np.float32)
        elif len(shape) == 1:  # BatchNorm weight
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[-3:])) if len(shape) >= 4 else shape[-1]
            if key.startswith("decoder.") and key.split(".")[1] in ("3", "9", "21"):  # ConvTranspose [in, out, 3, 3]
                fan_in = shape[0] * 9 / 4  # stride 2: each output sees about a quarter of the taps
            state[key] = (rng.normal(0, 1, shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
    return state


# ------------------------------------------------------------------------------------------------ primitives
def conv2d(x, w, b=None, stride=1, pad=0, dilation=1):
    """PyTorch ``F.conv2d`` on NCHW with weight [out, in, kh, kw] (cross-correlation, symmetric zero padding)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    _, _, h, wd = x.shape
    out_c, _, kh, kw = w.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((x.shape[0], out_c, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dilation : i * dilation + stride * (oh - 1) + 1 : stride,
                      j * dilation : j * dilation + stride * (ow - 1) + 1 : stride]
            y += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j], optimize=True)
    if b is not None:
        y += b[None, :, None, None]
    return y


def dynamic_conv2d(x, w, b, pi, stride=1, pad=0, dilation=1):
    """DynamicConv2d: image n uses sum_k pi[n, k] * w[k] and the mixed bias."""
    outs = []
    for n in range(x.shape[0]):
        wn = np.tensordot(pi[n], w, axes=1)
        bn = pi[n] @ b
        outs.append(conv2d(x[n : n + 1], wn, bn, stride, pad, dilation))
    return np.concatenate(outs)


def conv_transpose2d(x, w, b, stride=2, output_padding=1):
    """PyTorch ``F.conv_transpose2d`` (padding 0) with weight [in, out, kh, kw]."""
    bsz, _, h, wd = x.shape
    _, out_c, kh, kw = w.shape
    oh = (h - 1) * stride + kh + output_padding
    ow = (wd - 1) * stride + kw + output_padding
    y = np.zeros((bsz, out_c, oh, ow), np.float64)
    for i in range(kh):
        for j in range(kw):
            y[:, :, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (wd - 1) + 1 : stride] += np.einsum(
                "bchw,co->bohw", x, w[:, :, i, j], optimize=True
            )
    return y + b[None, :, None, None]


def max_pool(x, kernel, stride, pad=0, ceil=False):
    """``F.max_pool2d`` with -inf padding (and ceil mode)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=-np.inf)
    _, _, h, w = x.shape

    def out_size(n):
        size = (n - kernel + (stride - 1 if ceil else 0)) // stride + 1
        return size

    oh, ow = out_size(h), out_size(w)
    extra_h = max(0, (oh - 1) * stride + kernel - h)
    extra_w = max(0, (ow - 1) * stride + kernel - w)
    x = np.pad(x, ((0, 0), (0, 0), (0, extra_h), (0, extra_w)), constant_values=-np.inf)
    y = np.full(x.shape[:2] + (oh, ow), -np.inf)
    for i in range(kernel):
        for j in range(kernel):
            y = np.maximum(y, x[:, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride])
    return y


def batch_norm(x, state, name, eps=1e-5):
    g, b = state[f"{name}.weight"], state[f"{name}.bias"]
    mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
    return (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps) * g[
        None, :, None, None
    ] + b[None, :, None, None]


def relu(x):
    return np.maximum(x, 0.0)


def to_nchw(images_nhwc):
    """Pixel-space NHWC RGB → the reference's network input (mean subtracted from R, G, B), NCHW float64."""
    x = np.asarray(images_nhwc, np.float64) - MEAN_RGB
    return np.transpose(x, (0, 3, 1, 2))


# ---------------------------------------------------------------------------------------------- networks
def ssd_forward(state, images_nhwc, config, pi=None):
    """The official SSD / RobustSSD test-mode forward → (loc [B, P, 4], logits [B, P, C], aux dict).

    With ``pi`` every conv is dynamic; with CFR keys conv4_3 uses ``conv_mean`` and ``aux["logvar"]`` holds
    ``min(conv_std, 10)`` (NCHW, pre-ReLU)."""
    x = to_nchw(images_nhwc)
    aux = {}

    def conv(name, h, stride=1, pad=0, dilation=1):
        w, b = state[f"{name}.weight"], state[f"{name}.bias"]
        if pi is None:
            return conv2d(h, w, b, stride, pad, dilation)
        return dynamic_conv2d(h, w, b, pi, stride, pad, dilation)

    sources = []
    for index, kind, arg in vgg_modules(config["width"]):
        if kind == "conv":
            _, _, pad, dilation = arg
            name = f"vgg.{index}"
            if f"{name}.conv_mean.weight" in state:
                aux["logvar"] = np.minimum(conv(f"{name}.conv_std", x, 1, pad, dilation), 10.0)
                x = conv(f"{name}.conv_mean", x, 1, pad, dilation)
                aux["mu"] = x
            else:
                x = conv(name, x, 1, pad, dilation)
        elif kind == "relu":
            x = relu(x)
        elif kind == "pool":
            x = max_pool(x, 2, 2)
        elif kind == "pool_ceil":
            x = max_pool(x, 2, 2, ceil=True)
        else:
            x = max_pool(x, 3, 1, pad=1)
        if index == 22:
            norm = np.sqrt(np.sum(x * x, axis=1, keepdims=True) + 1e-10)
            sources.append(state["L2Norm.weight"][None, :, None, None] * x / norm)
    sources.append(x)
    for i, (_, _, stride, pad) in enumerate(config["extras"]):
        x = relu(conv(f"extras.{i}", x, stride, pad))
        if i % 2 == 1:
            sources.append(x)
    batch, num_classes = x.shape[0], config["num_classes"]
    loc = [np.transpose(conv(f"loc.{i}", s, 1, 1), (0, 2, 3, 1)).reshape(batch, -1) for i, s in enumerate(sources)]
    conf = [np.transpose(conv(f"conf.{i}", s, 1, 1), (0, 2, 3, 1)).reshape(batch, -1) for i, s in enumerate(sources)]
    loc = np.concatenate(loc, 1).reshape(batch, -1, 4)
    logits = np.concatenate(conf, 1).reshape(batch, -1, num_classes)
    return loc, logits, aux


def resnet18_features(state, x_nchw, prefix="disc.base_net."):
    """torchvision ResNet-18 up to the global average pool (eval-mode BatchNorm) → [B, 512·width/64]."""
    x = conv2d(x_nchw, state[prefix + "conv1.weight"], None, 2, 3)
    x = max_pool(relu(batch_norm(x, state, prefix + "bn1")), 3, 2, pad=1)
    for stage in range(1, 5):
        for block in range(2):
            name = f"{prefix}layer{stage}.{block}"
            stride = 2 if (stage > 1 and block == 0) else 1
            y = relu(batch_norm(conv2d(x, state[f"{name}.conv1.weight"], None, stride, 1), state, f"{name}.bn1"))
            y = batch_norm(conv2d(y, state[f"{name}.conv2.weight"], None, 1, 1), state, f"{name}.bn2")
            shortcut = x
            if f"{name}.downsample.0.weight" in state:
                shortcut = conv2d(x, state[f"{name}.downsample.0.weight"], None, stride, 0)
                shortcut = batch_norm(shortcut, state, f"{name}.downsample.1")
            x = relu(y + shortcut)
    return x.mean(axis=(2, 3))


def aid_forward(state, images_nhwc, prefix="disc.base_net."):
    """The AID: softmax(fc(ResNet-18 features of the mean-subtracted image))."""
    feats = resnet18_features(state, to_nchw(images_nhwc), prefix)
    logits = feats @ state[prefix + "fc.weight"].T + state[prefix + "fc.bias"]
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def decoder_forward(state, z_nchw):
    """``decoder_large_21`` in eval mode: conv/convT + BN + LeakyReLU(0.01) ×8, conv, 160·tanh."""
    plan = [(0, "same"), (3, "up"), (6, "valid"), (9, "up"), (12, "valid"), (15, "valid"), (18, "same"), (21, "up")]
    x = z_nchw
    for index, kind in plan:
        w, b = state[f"decoder.{index}.weight"], state[f"decoder.{index}.bias"]
        x = conv_transpose2d(x, w, b) if kind == "up" else conv2d(x, w, b, 1, 1 if kind == "same" else 0)
        x = batch_norm(x, state, f"decoder.{index + 1}")
        x = np.where(x > 0, x, 0.01 * x)
    x = conv2d(x, state["decoder.24.weight"], state["decoder.24.bias"])
    return 160.0 * np.tanh(x)
