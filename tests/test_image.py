"""Input view: framing as Zero-1-to-3 was trained, and refusal of unusable files."""

import numpy as np
import pytest
import torch
from PIL import Image

from sjc3d.config import InputConfig
from sjc3d.errors import InputError
from sjc3d.image import load_input_view, object_box, read_rgba, resize_images


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
        (lambda p: Image.new("RGB", (64, 64), "white").save(p / "rgb.png") or p / "rgb.png", "fully transparent"),
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


# --------------------------------------------------------------------------- RGB photos


def write_photo(path, rgb: np.ndarray):
    """Float RGB [H, W, 3] in [0, 1] → an 8-bit RGB PNG (no alpha channel)."""
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture()
def no_rembg(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rembg", None)  # `import rembg` fails


def fake_rembg(monkeypatch, remove):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "rembg", types.SimpleNamespace(remove=remove))


def test_plain_background_is_cut_out_without_rembg(tmp_path, no_rembg):
    """A disc on a noisy flat backdrop with dust; a backdrop-coloured dot inside the disc stays part of the object."""
    rng = np.random.default_rng(0)
    h, w = 160, 200
    backdrop = np.array([0.25, 0.5, 0.75])
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 85) ** 2 + (xx - 90) ** 2 < 50**2
    dot = (yy - 85) ** 2 + (xx - 90) ** 2 < 6**2  # backdrop colour, enclosed by the disc
    rgb = np.where(disc[..., None], np.array([0.9, 0.45, 0.1]), backdrop)
    rgb = np.where(dot[..., None], backdrop, rgb) + rng.normal(0, 0.02, (h, w, 3))
    rgb[[30, 100, 140], [5, 12, 8]] = 0.0  # dust specks: not objects (they would widen the framing box)
    rgba = read_rgba(write_photo(tmp_path / "photo.png", rgb), InputConfig())
    mask = rgba[..., 3] > 0.5
    assert iou(mask, disc) > 0.98
    assert mask[dot].all()  # not reached by the flood from the border
    assert not mask[:, :20].any()


@pytest.mark.parametrize("name", ["hamburger_rgba.png", "teddy_rgba.png", "robot_rgba.png"])
def test_real_object_on_a_flat_colour_is_recovered(data_dir, tmp_path, no_rembg, name):
    """Real RGBA images composited on flat grey with noise: the recovered mask matches the true alpha.

    Measured IoU (alpha > 0.5): hamburger 0.985, teddy 0.988, robot 0.984.
    """
    rng = np.random.default_rng(0)
    truth = np.asarray(Image.open(data_dir / "images" / name).convert("RGBA")).astype(np.float64) / 255
    alpha = truth[..., 3:]
    photo = truth[..., :3] * alpha + 0.5 * (1 - alpha) + rng.normal(0, 0.015, alpha.shape[:2] + (3,))
    rgba = read_rgba(write_photo(tmp_path / "photo.png", photo), InputConfig())
    assert iou(rgba[..., 3] > 0.5, truth[..., 3] > 0.5) > 0.97


def test_a_busy_background_needs_rembg(tmp_path, monkeypatch, no_rembg):
    rng = np.random.default_rng(1)
    path = write_photo(tmp_path / "busy.png", rng.uniform(0, 1, (64, 64, 3)))
    with pytest.raises(InputError, match="not a plain colour, and no background remover is installed: pip install rembg"):
        read_rgba(path, InputConfig())
    with pytest.raises(InputError, match="has no alpha channel: give an RGBA image"):
        read_rgba(path, InputConfig(remove_background="no"))

    def remove(image):  # a stand-in remover: the left half is the object
        array = np.asarray(image.convert("RGB"))
        alpha = np.zeros(array.shape[:2], dtype=np.uint8)
        alpha[:, :32] = 255
        return Image.fromarray(np.dstack([array, alpha]))

    fake_rembg(monkeypatch, remove)
    rgba = read_rgba(path, InputConfig())
    assert (rgba[:, :32, 3] == 1).all() and (rgba[:, 32:, 3] == 0).all()


def test_rembg_that_cannot_download_its_model_stops_with_one_line(tmp_path, monkeypatch):
    """rembg fetches u2net.onnx with pooch on first use; offline that raises a requests ConnectionError."""
    import requests

    def remove(image):
        raise requests.exceptions.ConnectionError(
            "HTTPSConnectionPool(host='github.com', port=443): Max retries exceeded with url: "
            "/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx (Caused by NameResolutionError(\n"
            "\"Failed to resolve 'github.com'\"))")

    fake_rembg(monkeypatch, remove)
    rng = np.random.default_rng(2)
    busy = write_photo(tmp_path / "busy.png", rng.uniform(0, 1, (64, 64, 3)))
    plain = write_photo(tmp_path / "plain.png", np.pad(np.full((20, 20, 3), 0.1), ((22, 22), (22, 22), (0, 0)),
                                                       constant_values=0.9))
    for path, cfg in ((busy, InputConfig()), (plain, InputConfig(remove_background="yes"))):
        with pytest.raises(InputError) as err:
            read_rgba(path, cfg)
        message = str(err.value)
        assert "rembg could not run (ConnectionError" in message and "u2net.onnx into ~/.u2net" in message
        assert "\n" not in message
    assert read_rgba(plain, InputConfig())[..., 3].mean() == pytest.approx(400 / 64**2, rel=0.05)  # auto: no rembg needed


def test_the_rim_of_a_cut_out_is_partly_transparent():
    """A column of pixels half object, half backdrop gets alpha ½ (not 1: no halo of backdrop colour)."""
    from sjc3d.background import plain_background_alpha

    rgb = np.full((40, 40, 3), 0.1)
    colour = np.array([0.9, 0.3, 0.2])
    rgb[10:30, 10:30] = colour
    rgb[10:30, 30] = 0.5 * colour + 0.5 * 0.1  # the object covers half of these pixels
    alpha = plain_background_alpha(rgb)
    np.testing.assert_allclose(alpha[12:28, 30], 0.5, atol=0.01)
    assert (alpha[11:29, 11:29] == 1).all() and alpha[:, :9].max() == 0
