"""Prior boxes and the prior spec against the numbers of docs/reference.md#prior-boxes."""

import numpy as np
import pytest

from robustdet_tf import priors
from robustdet_tf.priors import PriorSpec, ssd300_priors

VOC_PRIORS = ssd300_priors("voc")


def test_prior_counts_and_starts():
    assert VOC_PRIORS.shape == (8732, 4)
    per_cell = priors.SSD300_VOC.boxes_per_location
    counts = [f * f * a for f, a in zip(priors.SSD300_VOC.feature_maps, per_cell)]
    assert counts == [5776, 2166, 600, 150, 36, 4]
    assert list(np.cumsum([0] + counts[:-1])) == [0, 5776, 7942, 8542, 8692, 8728]
    assert ssd300_priors("coco").shape == (8732, 4)


@pytest.mark.parametrize(
    "index, expected",
    [
        (0, (0.013333, 0.013333, 0.1, 0.1)),
        (1, (0.013333, 0.013333, 0.141421, 0.141421)),
        (2, (0.013333, 0.013333, 0.141421, 0.070711)),
        (3, (0.013333, 0.013333, 0.070711, 0.141421)),
        (4, (0.04, 0.013333, 0.1, 0.1)),
        (5776, (0.026667, 0.026667, 0.2, 0.2)),
        (5777, (0.026667, 0.026667, 0.272029, 0.272029)),
        (5780, (0.026667, 0.026667, 0.346410, 0.115470)),
        (8728, (0.5, 0.5, 0.88, 0.88)),
        (8729, (0.5, 0.5, 0.961249, 0.961249)),
        (8730, (0.5, 0.5, 1.0, 0.622254)),
        (8731, (0.5, 0.5, 0.622254, 1.0)),
    ],
)
def test_voc_priors(index, expected):
    np.testing.assert_allclose(VOC_PRIORS[index], expected, atol=1e-6)


def test_coco_priors():
    coco = ssd300_priors("coco")
    np.testing.assert_allclose(coco[0], (0.013333, 0.013333, 0.07, 0.07), atol=1e-6)
    np.testing.assert_allclose(coco[2], (0.013333, 0.013333, 0.098995, 0.049497), atol=1e-6)
    np.testing.assert_allclose(coco[-3], (0.5, 0.5, 0.955772, 0.955772), atol=1e-6)
    np.testing.assert_allclose(coco[-1], (0.5, 0.5, 0.615183, 1.0), atol=1e-6)


def test_priors_for_other_sizes_and_bad_config():
    p = priors.prior_boxes(64, (8, 4), (8, 20), (20, 38), ((2,), (2, 3)))
    assert p.shape == (8 * 8 * 4 + 4 * 4 * 6, 4)
    np.testing.assert_allclose(p[0], (0.5 / 8, 0.5 / 8, 8 / 64, 8 / 64), atol=1e-7)
    assert p.min() >= 0 and p.max() <= 1
    with pytest.raises(ValueError, match="one entry per source"):
        priors.prior_boxes(64, (8, 4), (8,), (20, 38), ((2,), (2,)))


def test_spec_round_trips_through_its_dict_and_a_model_config():
    spec = priors.SSD300_COCO
    assert PriorSpec.from_dict(spec.to_dict()) == spec
    config = {"image_size": 300, "num_classes": 81, **{k: spec.to_dict()[k] for k in PriorSpec.KEYS}}
    derived = PriorSpec.from_dict(config).with_feature_maps(300, (38, 19, 10, 5, 3, 1))
    assert derived == spec
    np.testing.assert_array_equal(derived.boxes(), ssd300_priors("coco"))
    assert spec.boxes_per_location == (4, 6, 6, 6, 4, 4)
    with pytest.raises(ValueError, match="feature_maps"):
        PriorSpec.from_dict(config).boxes()
