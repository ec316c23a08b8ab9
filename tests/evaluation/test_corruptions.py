"""The Corrupt column: imagecorruptions' own pixels, the same for every model, mPC and rPC with paired intervals."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from imagecorruptions import corrupt, get_corruption_names

from robustdet_tf.evaluation import corruptions, robustness, sharded
from robustdet_tf.evaluation import protocol as P
from robustdet_tf.evaluation.table_spec import TableSpec
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD
from tests.evaluation.test_robustness import CLASS_NAMES, NUM_IMAGES, SIZE, rectangles
from tests.helpers import evaluation_batches, train_on_detection_loss

PAIRS = {"corruptions": {"names": ["fog", "gaussian_noise", "glass_blur"], "severities": [1, 4], "seed": 3}}


def test_the_package_lists_the_same_corruptions():
    assert list(corruptions.COMMON) == get_corruption_names("common")
    assert list(corruptions.HELD_OUT) == get_corruption_names("validation")


@pytest.mark.parametrize("name", get_corruption_names("all"))
def test_a_corrupted_image_is_imagecorruptions_corrupt_of_the_same_image_severity_and_seed(name):
    image = np.random.default_rng(1).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    seed = 1234
    np.random.seed(seed)
    extra = {"seed": seed} if name in ("impulse_noise", "glass_blur") else {}
    want = corrupt(image, severity=3, corruption_name=name, **extra)
    np.random.seed(99)  # the global state before the call does not matter
    got = corruptions.corrupt_image(image, name, 3, seed)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(corruptions.corrupt_image(image, name, 3, seed), want)  # and again


def test_batches_are_corrupted_deterministically_image_by_image():
    images = np.random.default_rng(2).uniform(0, 255, (3, 36, 36, 3)).astype(np.float32)
    one = corruptions.corrupt_batch(images, "gaussian_noise", 2, seed=5, batch_index=7)
    np.testing.assert_array_equal(one, corruptions.corrupt_batch(images, "gaussian_noise", 2, seed=5, batch_index=7))
    pixels = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    for i in range(3):
        seed = corruptions.image_seed(5, "gaussian_noise", 2, 7, i)
        np.testing.assert_array_equal(one[i], corruptions.corrupt_image(pixels[i], "gaussian_noise", 2, seed))
    other_batch = corruptions.corrupt_batch(images, "gaussian_noise", 2, seed=5, batch_index=8)
    assert not np.array_equal(one, other_batch)  # another place in the set draws other noise
    assert len({corruptions.image_seed(5, "fog", s, 0, 0) for s in range(1, 6)}) == 5
    with pytest.raises(ValueError, match="at least 32 × 32"):
        corruptions.corrupt_batch(np.zeros((1, 16, 16, 3), np.float32), "fog", 1, 0, 0)


def test_the_cache_holds_what_a_fresh_computation_gives(tmp_path):
    images = tf.constant(np.random.default_rng(3).uniform(0, 255, (2, 40, 40, 3)).astype(np.float32))
    cached = corruptions.corrupter("Corrupt:snow:2", 0, str(tmp_path / "pair"))
    first = cached(4, images).numpy()
    assert (tmp_path / "pair" / "batch-000004.npy").exists()
    np.testing.assert_array_equal(cached(4, images).numpy(), first)  # read back
    np.testing.assert_array_equal(corruptions.corrupter("Corrupt:snow:2", 0, None)(4, images).numpy(), first)


def test_bad_corruption_settings_are_refused_with_the_accepted_values():
    with pytest.raises(ValueError, match=r"\['smog'\] — choose from"):
        P.make_protocol("reference", {"corruptions": {"names": ["smog"]}})
    with pytest.raises(ValueError, match="each must be an integer in 1..5"):
        P.make_protocol("reference", {"corruptions": {"severities": [0, 6]}})
    with pytest.raises(ValueError, match="twice"):
        P.make_protocol("reference", {"corruptions": {"names": ["fog", "fog"]}})
    with pytest.raises(ValueError, match="attacks nothing"):
        P.make_attack("Corrupt", P.make_protocol("reference"))


@pytest.fixture(scope="module")
def two_models():
    keras.utils.set_random_seed(0)
    images, targets = rectangles(NUM_IMAGES, SIZE)
    trained = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    trained.build()
    train_on_detection_loss(trained, images, targets, steps=40)
    short = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)
    short.build()
    train_on_detection_loss(short, images, targets, steps=20)
    fresh = SSD(**TINY_SSD, pre_nms_top_k=50, max_detections=50)  # untrained: clean mAP 0, so no rPC
    fresh.build()
    batches = evaluation_batches(images, targets)
    return {"trained": trained, "short": short, "fresh": fresh}, batches


def test_every_model_sees_the_same_corrupted_pixels_and_the_column_is_their_mean(two_models, tmp_path, monkeypatch):
    models, batches = two_models
    seen: dict[tuple[str, int], list[bytes]] = {}
    made = []
    original_corrupt_batch = corruptions.corrupt_batch

    def counting(images, name, severity, seed, batch_index):
        made.append((name, severity, batch_index))
        return original_corrupt_batch(images, name, severity, seed, batch_index)

    original_compute = sharded.compute_shards

    def spying(directory, batches, step, *args, prepare=None, **kwargs):
        if prepare is not None:

            def recording(index, images):
                out = prepare(index, images)
                seen.setdefault((directory.split(os.sep)[-1], index), []).append(np.asarray(out).tobytes())
                return out

            return original_compute(directory, batches, step, *args, prepare=recording, **kwargs)
        return original_compute(directory, batches, step, *args, **kwargs)

    monkeypatch.setattr(corruptions, "corrupt_batch", counting)
    monkeypatch.setattr(sharded, "compute_shards", spying)
    results = robustness.evaluate_robustness(
        models, batches, CLASS_NAMES, tmp_path,
        TableSpec(attacks=("clean", "A_cls", "Corrupt"), overrides={"pgd": {"steps": 1}, **PAIRS}, sample_images=0,
                  plots=False))
    pairs = corruptions.sub_columns(PAIRS["corruptions"])
    assert len(pairs) == 6
    # Every pair's images were made once per batch (2 batches) for both models, and both models saw them.
    assert sorted(made) == sorted((n, s, b) for n in ("fog", "gaussian_noise", "glass_blur") for s in (1, 4)
                                  for b in (0, 1))
    assert len(seen) == 12 and all(len(v) == 3 and v[0] == v[1] == v[2] for v in seen.values())
    assert not os.path.exists(os.path.join(tmp_path, "shards"))  # the pairs' images went with the shards

    written = json.loads((tmp_path / "robustness.json").read_text())
    assert written == results
    for model in models:
        per_pair = written["corruptions"]["models"][model]
        values = [per_pair[n][str(s)]["mAP"] for n in ("fog", "gaussian_noise", "glass_blur") for s in (1, 4)]
        assert written["models"][model]["Corrupt"] == pytest.approx(np.mean(values), abs=1e-12)
        cell = written["cells"][model]["Corrupt"]
        assert cell["ci_low"] <= cell["mAP"] <= cell["ci_high"]
        assert all(per_pair[n][str(s)]["ci_low"] <= per_pair[n][str(s)]["mAP"] <= per_pair[n][str(s)]["ci_high"]
                   for n in per_pair for s in per_pair[n])
        rpc = written["rPC"][model]
        if model == "fresh":  # clean mAP 0: no ratio, and no NaN in the JSON
            assert written["models"][model]["clean"] == 0 and rpc == {"value": None, "ci_low": None, "ci_high": None}
            continue
        assert rpc["value"] == pytest.approx(written["models"][model]["Corrupt"] / written["models"][model]["clean"])
        assert rpc["ci_low"] <= rpc["value"] <= rpc["ci_high"]
        if model != "fresh":
            assert written["worst_case"][model]["attack"] == "A_cls"  # Corrupt is no attack
    assert written["corruptions"]["settings"] == {"names": ["fog", "gaussian_noise", "glass_blur"],
                                                  "severities": [1, 4], "seed": 3}
    assert {d["attack"] for d in written["differences"]} >= {"Corrupt"}
    assert written["models"]["trained"]["Corrupt"] < written["models"]["trained"]["clean"]
    assert "NaN" not in (tmp_path / "robustness.json").read_text()
    assert "Corrupt" in (tmp_path / "robustness.md").read_text()
