"""Input view: framing as Zero-1-to-3 was trained, and refusal of unusable files."""

import numpy as np
import pytest
import torch
from PIL import Image

from sjc3d.config import InputConfig
from sjc3d.errors import InputError
from sjc3d.image import load_input_view, object_box, resize_images


def write_rgba(path, size=(300, 200), box=(40, 60, 100, 160), color=(255, 0, 0)):
    """An off-centre opaque rectangle (top, left, bottom, right) on a transparent canvas."""
    rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
    top, left, bottom, right = box
    rgba[top:bottom, left:right] = (*color, 255)
    Image.fromarray(rgba).save(path)
    return path


def test_object_is_recentred_and_scaled(tmp_path):
    view = load_input_view(write_rgba(tmp_path / "a.png"), InputConfig())
    assert view.rgb.shape == (256, 256, 3) and view.mask.shape == (256, 256)
    top, left, bottom, right = object_box(view.mask.numpy())
    assert max(bottom - top, right - left) == pytest.approx(200, abs=2)  # 200/256 of the frame
    assert (top + bottom) / 2 == pytest.approx(128, abs=1.5) and (left + right) / 2 == pytest.approx(128, abs=1.5)
    assert torch.allclose(view.rgb[0, 0], torch.ones(3))  # white background
    assert torch.allclose(view.rgb[128, 128], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)


def test_object_fraction_is_configurable(tmp_path):
    view = load_input_view(write_rgba(tmp_path / "a.png"), InputConfig(object_fraction=0.5, size=128))
    top, left, bottom, right = object_box(view.mask.numpy())
    assert max(bottom - top, right - left) == pytest.approx(64, abs=2)


def test_real_rgba_image(data_dir):
    view = load_input_view(data_dir / "images" / "microphone.png", InputConfig())
    top, left, bottom, right = object_box(view.mask.numpy())
    assert max(bottom - top, right - left) == pytest.approx(200, abs=3)
    assert 0 < view.mask.mean() < 0.6
    assert view.rgb.min() >= 0 and view.rgb.max() <= 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.png", "does not exist"),
        (lambda p: (p / "notes.png").write_text("hello") and p / "notes.png", "is not an image"),
        (lambda p: write_rgba(p / "tiny.png", size=(8, 8), box=(1, 1, 4, 4)), "need at least 16 pixels"),
        (lambda p: write_rgba(p / "clear.png", box=(0, 0, 0, 0)), "fully transparent"),
        (lambda p: Image.new("RGB", (64, 64), "white").save(p / "rgb.png") or p / "rgb.png", "no alpha channel"),
        (lambda p: p, "is not a file"),
    ],
)
def test_unusable_inputs_are_refused(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        load_input_view(make(tmp_path), InputConfig())


def test_resize_images():
    x = torch.rand(2, 64, 64, 3)
    small = resize_images(x, 16)
    assert small.shape == (2, 16, 16, 3)
    assert torch.allclose(small[0, 0, 0], x[0, :4, :4].mean(dim=(0, 1)), atol=1e-6)
    assert resize_images(x, 128).shape == (2, 128, 128, 3)


def test_rgb_without_alpha_uses_an_installed_background_remover(tmp_path, monkeypatch):
    """With `rembg` importable, `auto` cuts the object out; `no` refuses; without it, a clear error."""
    import sys
    import types

    rgb = np.full((64, 64, 3), 255, dtype=np.uint8)
    rgb[16:48, 24:40] = (0, 128, 0)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)

    def remove(image):  # a stand-in remover: everything not white is the object
        array = np.asarray(image.convert("RGB"))
        alpha = np.where((array < 250).any(-1), 255, 0).astype(np.uint8)
        return Image.fromarray(np.dstack([array, alpha]))

    monkeypatch.setitem(sys.modules, "rembg", types.SimpleNamespace(remove=remove))
    view = load_input_view(path, InputConfig())
    top, left, bottom, right = object_box(view.mask.numpy())
    assert max(bottom - top, right - left) == pytest.approx(200, abs=2)
    with pytest.raises(InputError, match="no alpha channel"):
        load_input_view(path, InputConfig(remove_background="no"))
    monkeypatch.setitem(sys.modules, "rembg", None)  # import fails
    with pytest.raises(InputError, match="no background remover is installed: pip install rembg"):
        load_input_view(path, InputConfig())
