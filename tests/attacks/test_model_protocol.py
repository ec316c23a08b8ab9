"""What attacks need of a model (``attacks/model_protocol.py``): one Protocol, checked where an attack starts."""

import pytest
import tensorflow as tf

from robustdet_tf.attacks import pgd as pgd_lib
from robustdet_tf.attacks.model_protocol import AttackableDetector, RoutedDetector, check_attackable, has_aid
from robustdet_tf.attacks.spec import AttackSpec
from robustdet_tf.models.robustdet import RobustDet
from robustdet_tf.models.ssd import SSD
from tests.conftest import TINY_SSD


def test_the_package_detectors_satisfy_the_protocol_and_only_robustdet_is_routed():
    ssd = SSD(**TINY_SSD)
    robustdet = RobustDet(**TINY_SSD, num_kernels=2, aid_width=4)
    assert isinstance(ssd, AttackableDetector) and isinstance(robustdet, AttackableDetector)
    assert isinstance(robustdet, RoutedDetector) and not isinstance(ssd, RoutedDetector)
    assert has_aid(robustdet) and not has_aid(ssd)
    check_attackable(ssd, "pgd")  # nothing raised


def test_a_model_missing_members_is_refused_once_naming_the_attack_and_every_member():
    class HeadsOnly:
        priors = tf.zeros([4, 4])

        def __call__(self, images, training=False):
            return {"logits": tf.zeros([1, 4, 3]), "loc": tf.zeros([1, 4, 4])}

    targets = {"boxes": tf.zeros([1, 1, 4]), "labels": tf.zeros([1, 1], tf.int32)}
    with pytest.raises(AttributeError, match=r"pgd \(cls\): the model HeadsOnly has no 'num_classes', "
                                             r"'match_threshold', 'detection_loss' attributes; pgd \(cls\) needs"):
        pgd_lib.pgd(HeadsOnly(), tf.zeros([1, 8, 8, 3]), targets, AttackSpec("cls", steps=1))
