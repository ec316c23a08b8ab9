"""TFLite export: builtin ops only, float32 equal to Keras, dynamic-range quantised close to float, file runner.

Models: the tiny SSD and a tiny RobustDet expanded from it with K different kernels and a real mixture π
(``tiny_models``).  Conversions are cached per module: each costs seconds on 2 cores.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from robustdet_tf import boxes as box_ops  # noqa: E402
from robustdet_tf.detections import postprocess  # noqa: E402
from robustdet_tf.export import tflite  # noqa: E402
from tests.export.tiny_models import tiny_robustdet, tiny_ssd  # noqa: E402

MAX_DETECTIONS = 100


@pytest.fixture(scope="module", autouse=True)
def _clean_saved_models():
    yield
    for directory in _SAVED_MODELS.values():
        shutil.rmtree(directory, ignore_errors=True)
    _SAVED_MODELS.clear()
    _BLOBS.clear()


@pytest.fixture(scope="module")
def models():
    ssd = tiny_ssd()
    return {"ssd": ssd, "robust": tiny_robustdet(ssd)}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)


_SAVED_MODELS, _BLOBS = {}, {}


def converted(models, name, quantization, implementation=None) -> bytes:
    """Cached conversions; float32 and quantised models of one AAconv implementation share one SavedModel."""
    implementation = implementation or tflite.DEFAULT_AACONV_IMPLEMENTATION[quantization]
    key = (name, quantization, implementation)
    if key not in _BLOBS:
        if (name, implementation) not in _SAVED_MODELS:
            directory = tempfile.mkdtemp(prefix="test_tflite_")
            tflite.write_raw_saved_model(models[name], directory, implementation)
            _SAVED_MODELS[(name, implementation)] = directory
        _BLOBS[key] = tflite.convert_saved_model(_SAVED_MODELS[(name, implementation)], quantization)
    return _BLOBS[key]


def run(blob: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    """The batch-1 model over a batch, image by image."""
    runner = tflite.make_interpreter(model_content=blob).get_signature_runner("serving_default")
    outs = [runner(images=images[i : i + 1]) for i in range(len(images))]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def op_names(blob: bytes) -> set[str]:
    interpreter = tflite.make_interpreter(model_content=blob)
    if not hasattr(interpreter, "_get_ops_details"):
        pytest.skip("this interpreter does not list its ops")
    return {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.parametrize(
    "name,implementation",
    [("ssd", None), ("robust", "stacked"), ("robust", "map_fn")],
    ids=["ssd", "robustdet_stacked", "robustdet_map_fn"],
)
@pytest.mark.slow
def test_float_tflite_equals_keras(models, images, name, implementation):
    model = models[name]
    blob = converted(models, name, "float32", implementation)
    got = run(blob, images)
    want = model(images, training=False)
    assert set(got) == ({"loc", "logits", "pi"} if name == "robust" else {"loc", "logits"})
    for key in got:
        np.testing.assert_allclose(got[key], want[key].numpy(), rtol=1e-5, atol=1e-4, err_msg=key)
    if name == "robust":
        assert 0.05 < want["pi"].numpy().max() < 0.99  # the mixture is a real mixture
        assert model.detector.vgg_convs["vgg_0"].implementation == "auto"  # converted a copy, not the model

    det = postprocess(got["loc"], got["logits"], model.priors, max_detections=MAX_DETECTIONS)
    ref = model.detect(images, max_detections=MAX_DETECTIONS)
    np.testing.assert_array_equal(det["num_detections"].numpy(), ref["num_detections"].numpy())
    np.testing.assert_array_equal(det["detection_classes"].numpy(), ref["detection_classes"].numpy())
    for key in ("detection_boxes", "detection_scores"):
        np.testing.assert_allclose(det[key].numpy(), ref[key].numpy(), rtol=1e-5, atol=1e-4, err_msg=key)


@pytest.mark.parametrize(
    "name,quantization,implementation,loop",
    [("ssd", "float32", None, False),
     pytest.param("robust", "float32", "map_fn", True, marks=pytest.mark.slow),
     ("robust", "dynamic_range", None, False)],
)
def test_only_builtin_ops(models, name, quantization, implementation, loop):
    """The map_fn AAconv lowers to a builtin WHILE; the stacked one (the default) to plain convolutions."""
    names = op_names(converted(models, name, quantization, implementation))
    assert "CONV_2D" in names
    assert not any(n.startswith("Flex") or n in ("CUSTOM", "TFLite_Detection_PostProcess") for n in names), names
    assert ("WHILE" in names) == loop


def _mean_best_iou(float_det, quant_det, k=20) -> float:
    """For each of the float model's top-k detections, the best IoU with a quantised detection of the same
    class; averaged over detections and images."""
    values = []
    for b in range(float_det["num_detections"].shape[0]):
        n_f = min(k, int(float_det["num_detections"][b]))
        n_q = int(quant_det["num_detections"][b])
        iou = box_ops.pairwise_iou(float_det["detection_boxes"][b, :n_f], quant_det["detection_boxes"][b, :n_q])
        same = float_det["detection_classes"][b, :n_f, None] == quant_det["detection_classes"][b, None, :n_q]
        values.append(tf.reduce_max(tf.where(same, iou, 0.0), axis=1).numpy())
    return float(np.mean(np.concatenate(values)))


@pytest.mark.parametrize("name", ["ssd", "robust"])
def test_dynamic_range_quantised_detections_overlap_float(models, images, name):
    """Measured on these models: loc/logit correlation 0.9998-0.9999, mean best IoU of the top-20 float detections
    0.97 (SSD) / 0.97 (RobustDet, stacked)."""
    float_blob = converted(models, name, "float32")
    quant_blob = converted(models, name, "dynamic_range")
    assert len(quant_blob) < 0.35 * len(float_blob)  # int8 weights (stacked AAconv: every kernel is a constant)
    float_out, quant_out = run(float_blob, images), run(quant_blob, images)
    for key in ("loc", "logits"):
        assert np.corrcoef(float_out[key].ravel(), quant_out[key].ravel())[0, 1] > 0.999, key
        assert np.abs(float_out[key] - quant_out[key]).max() > 1e-4  # it really is a different (quantised) model
    priors = models[name].priors
    float_det = postprocess(float_out["loc"], float_out["logits"], priors, max_detections=MAX_DETECTIONS)
    quant_det = postprocess(quant_out["loc"], quant_out["logits"], priors, max_detections=MAX_DETECTIONS)
    assert float_det["num_detections"].numpy().min() >= 20
    assert _mean_best_iou(float_det, quant_det) > 0.9


def test_export_tflite_files_detector_and_refusals(models, images, tmp_path):
    model = models["ssd"]
    path = tmp_path / "ssd.tflite"
    assert tflite.export_tflite(model, path) == str(path)
    meta = json.loads((tmp_path / "ssd.json").read_text())
    assert meta["model_class"] == "SSD" and meta["quantization"] == "float32" and meta["outputs"] == ["loc", "logits"]

    detector = tflite.TFLiteDetector(path)  # batch-1 model fed a batch of 3 in chunks
    np.testing.assert_allclose(detector.priors.numpy(), model.priors.numpy(), atol=1e-7)
    det = detector.detect(images, max_detections=MAX_DETECTIONS)
    ref = model.detect(images, max_detections=MAX_DETECTIONS)
    np.testing.assert_array_equal(det["detection_classes"].numpy(), ref["detection_classes"].numpy())
    np.testing.assert_allclose(det["detection_boxes"].numpy(), ref["detection_boxes"].numpy(), atol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 64, 64, 3\]"):
        detector.raw(images[:, :32])

    size = os.path.getsize(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tflite.export_tflite(model, path, quantization="dynamic_range")
    assert os.path.getsize(path) == size  # untouched
    tflite.export_tflite(model, path, quantization="dynamic_range", overwrite=True)
    assert os.path.getsize(path) < 0.35 * size
    assert json.loads((tmp_path / "ssd.json").read_text())["quantization"] == "dynamic_range"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ssd.json", "ssd.tflite"]  # no temporary leftovers

    with pytest.raises(ValueError, match=r"\.tflite"):
        tflite.export_tflite(model, tmp_path / "ssd.bin")
    with pytest.raises(ValueError, match="map_fn"):
        tflite.tflite_ready_copy(models["robust"], "grouped")
    assert tflite.tflite_ready_copy(model, "map_fn") is model  # the plain SSD has no AAconv to swap
    copy = tflite.tflite_ready_copy(models["robust"], "map_fn")
    assert copy is not models["robust"] and copy.detector.vgg_convs["vgg_0"].resolved_implementation == "map_fn"
    for a, b in zip(copy.weights, models["robust"].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    os.remove(tmp_path / "ssd.json")
    with pytest.raises(FileNotFoundError, match="ssd.json"):
        tflite.TFLiteDetector(path)
