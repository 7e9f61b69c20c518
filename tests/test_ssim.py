"""SSIM (sjc3d.metrics.ssim): closed-form cases and its ordering of degradations."""

import numpy as np
import pytest

from sjc3d.metrics import ssim


def test_constant_images_reduce_to_the_luminance_term():
    a, b = np.full((32, 32, 3), 0.2), np.full((32, 32, 3), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # no variance: contrast-structure term is 1
    assert ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_structure_counts_more_than_a_small_brightness_shift():
    rng = np.random.default_rng(0)
    image = rng.random((48, 48, 3))
    shifted = np.clip(image + 0.05, 0, 1)
    scrambled = rng.permutation(image.reshape(-1, 3)).reshape(image.shape)
    assert ssim(image, shifted) > 0.9 > ssim(image, scrambled)
    assert ssim(image, scrambled) == pytest.approx(ssim(scrambled, image))
    with pytest.raises(ValueError):
        ssim(image, image[:40])
