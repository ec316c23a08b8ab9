"""Shared test fixtures: a tiny SSD configuration of the same structure as SSD300."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

TINY_SSD = dict(
    num_classes=4,
    image_size=64,
    width=1 / 16,
    extras=((256, 1, 1, 0), (512, 3, 2, 1)),
    min_sizes=(8, 20, 38),
    max_sizes=(20, 38, 56),
    aspect_ratios=((2,), (2, 3), (2,)),
    steps=None,
)


@pytest.fixture
def tiny_ssd_config() -> dict:
    """Constructor arguments of a tiny SSD (64×64 input, 3 sources, channels /16)."""
    return dict(TINY_SSD)
