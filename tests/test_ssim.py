"""SSIM (sjc3d.metrics.ssim, ssim_map): closed-form cases, its ordering of degradations, its windows."""

import numpy as np
import pytest

from sjc3d.metrics import ssim, ssim_map, ssim_radius


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


def test_the_map_scores_each_window_and_a_local_change_stays_local():
    """`ssim_map` has one value per window centre away from the border; a change in one corner lowers
    only the windows whose footprint (2r + 1 pixels wide) reaches it; `ssim` is the map's mean."""
    rng = np.random.default_rng(1)
    image = rng.random((40, 40, 3))
    changed = image.copy()
    changed[:4, :4] = 1.0 - changed[:4, :4]
    r = ssim_radius()
    index = ssim_map(image, changed)
    assert index.shape == (40 - 2 * r, 40 - 2 * r)
    reach = 4 + r  # image rows/columns 0..3 changed: window centres up to 3 + r see them
    assert index[: reach - r, : reach - r].max() < 1 - 1e-9 and index[0, 0] < 0.99
    assert np.allclose(index[reach - r:, :], 1.0) and np.allclose(index[:, reach - r:], 1.0)
    assert ssim(image, changed) == pytest.approx(float(index.mean()))
