"""Textured export: UV atlas, texel rasterisation, baking, gutter, files and colour spaces."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from sjc3d.cameras import spherical_to_c2w
from sjc3d.config import ExportConfig
from sjc3d.errors import InputError
from sjc3d.export import export_field, render_colored_mesh, write_mesh
from sjc3d.export import atlas as atlas_module
from sjc3d.export.atlas import AtlasError, square_uv, unwrap
from sjc3d.export.gltf import glb_image, linear_to_srgb, read_glb, srgb_to_linear
from sjc3d.export.texture import fill_gutter, rasterize_uv, sample_texture, seam_vertex_normals
from sjc3d.export.writers import texture_paths
from sjc3d.fields.base import FieldOutput
from sjc3d.metrics import psnr
from test_export import BLUE, RED, RampSphere, dense_render_views, latent_views, make_run

pytest.importorskip("xatlas")

VIEWS = spherical_to_c2w(torch.tensor([20.0, 0.0, -10.0]), torch.tensor([30.0, 150.0, 260.0]), torch.full((3,), 2.0))


class StripedSphere(RampSphere):
    """RampSphere with colour stripes around z: 12 bands of alternating RED and BLUE.

    A band is ~0.13 units wide at the equator: a 500-face mesh (edges ~0.1) cannot hold it in
    vertex colours, a texture can.
    """

    def forward(self, points):
        angle = torch.atan2(points[:, 1], points[:, 0])
        band = (torch.floor(angle / (2 * np.pi) * 12) % 2)[:, None]
        colour = torch.where(band > 0, torch.tensor(RED), torch.tensor(BLUE))
        if self.n_channels == 4:
            colour = torch.cat([colour, torch.full_like(colour[:, :1], 0.5)], -1)
        return FieldOutput(self.density(points), colour)


def mean_view_psnr(field, mesh, resolution=64) -> float:
    """PSNR of the mesh's renders against the field's, over pixels inside both (colour only)."""
    values = []
    for c2w in VIEWS:
        target = dense_render_views(field, c2w[None], 49.1, resolution, torch.ones(3), n_samples=320)
        rendered, mask = render_colored_mesh(mesh, c2w, 49.1, resolution)
        inside = mask & (target.opacity[0, ..., 0] > 0.99)
        values.append(psnr(rendered[inside], target.features[0][inside]))
    return float(np.mean(values))


# --------------------------------------------------------------------------- atlas


def test_unwrap_keeps_faces_and_packs_uv_into_the_unit_square():
    sphere = trimesh.creation.icosphere(2, radius=0.5)
    atlas = unwrap(sphere.vertices, sphere.faces, 128)
    assert np.array_equal(atlas.vertex_map[atlas.faces], sphere.faces)  # same faces, same order
    assert len(atlas.vertex_map) > len(sphere.vertices)  # a closed surface needs seams
    assert atlas.uv.min() >= 0.0 and atlas.uv.max() <= 1.0
    tri = atlas.uv[atlas.faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    assert (area > 0).all() and 0.25 < area.sum() < 1.0  # charts fill much of the square, no overlap


def test_square_uv_keeps_texels_square_and_flips_v():
    # A 200×100 atlas packed for S = 100: both axes scale by 100/200, v counts up.
    uv = square_uv(np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]), width=200, height=100, size=100)
    assert np.allclose(uv, [[0.0, 1.0], [1.0, 0.5], [0.5, 0.75]])


def test_a_crashing_xatlas_is_a_one_line_atlas_error(monkeypatch):
    monkeypatch.setattr(atlas_module, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    sphere = trimesh.creation.icosphere(1)
    with pytest.raises(AtlasError, match="signal 11.*--max-faces"):
        unwrap(sphere.vertices, sphere.faces, 64)


# --------------------------------------------------------------------------- texel rasterisation and gutter


def test_rasterize_uv_covers_the_triangle_and_its_barycentrics_give_the_texel_centre():
    size = 16
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # lower-left half of the image (v up)
    hits = rasterize_uv(uv, np.array([[0, 1, 2]]), size)
    centre_u = (hits.col + 0.5) / size
    centre_v = 1.0 - (hits.row + 0.5) / size
    assert np.allclose(hits.bary @ uv, np.stack([centre_u, centre_v], 1))
    assert (centre_u + centre_v <= 1.0 + 1e-9).all()
    assert len(hits.row) == size * (size + 1) // 2  # centres on the diagonal count as inside
    assert hits.row.max() == size - 1 and hits.row.min() == 0  # v up: row 0 is v ≈ 1


def test_fill_gutter_takes_the_nearest_covered_texel():
    image = np.zeros((5, 5, 3))
    covered = np.zeros((5, 5), dtype=bool)
    image[0, 0], covered[0, 0] = (1.0, 0.0, 0.0), True
    image[4, 4], covered[4, 4] = (0.0, 0.0, 1.0), True
    filled = fill_gutter(image, covered)
    assert np.allclose(filled[1, 1], (1, 0, 0)) and np.allclose(filled[3, 4], (0, 0, 1))
    assert np.allclose(filled[0, 0], (1, 0, 0)) and np.allclose(filled[4, 4], (0, 0, 1))


def test_sample_texture_reads_v_up():
    texture = torch.zeros(2, 2, 3)
    texture[0, :, 0] = 1.0  # top row red
    texture[1, :, 2] = 1.0  # bottom row blue
    out = sample_texture(texture, torch.tensor([[0.25, 0.75], [0.25, 0.25]]))
    assert torch.allclose(out, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))


def test_seam_vertex_normals_agree_across_a_split_vertex():
    sphere = trimesh.creation.icosphere(2, radius=0.5)
    atlas = unwrap(sphere.vertices, sphere.faces, 64)
    normals = seam_vertex_normals(sphere.vertices[atlas.vertex_map], atlas.faces)
    radial = sphere.vertices[atlas.vertex_map] / 0.5
    assert np.abs(normals - radial).max() < 0.05  # copies of a seam vertex get the unsplit normal


# --------------------------------------------------------------------------- baking


def test_rgb_texture_beats_vertex_colours_on_a_coarse_mesh():
    field = StripedSphere()
    base = ExportConfig(resolution=64, max_faces=500)
    vertex = export_field(field, base).mesh
    textured = export_field(field, ExportConfig(resolution=64, max_faces=500, texture=True, texture_size=256)).mesh
    assert textured.visual.kind == "texture" and len(textured.faces) == len(vertex.faces)
    vertex_db, texture_db = mean_view_psnr(field, vertex), mean_view_psnr(field, textured)
    # Measured 17.0 against 14.1 dB (what is left is the stripes' aliased edges at 64 px).
    assert texture_db > vertex_db + 2.0, (texture_db, vertex_db)
    assert texture_db > 16.0


def test_latent_texture_from_decoded_views_with_any_vae_factor():
    """Decoders of factor 8 and 4 (the toy prior's) both bake a texture that shows the halves."""
    field = RampSphere(n_channels=4)
    views, cfg = latent_views(field)
    for factor in (8, 4):

        def decode(latents, factor=factor):
            return torch.nn.functional.interpolate(latents[:, :3], scale_factor=factor, mode="nearest").permute(0, 2, 3, 1)

        views.decode = decode
        mesh = export_field(field, ExportConfig(resolution=48, color_views=6, texture=True, texture_size=128), views).mesh
        texture = torch.as_tensor(np.asarray(mesh.visual.material.baseColorTexture), dtype=torch.float32) / 255
        colors = sample_texture(texture, torch.as_tensor(mesh.visual.uv, dtype=torch.float32)).numpy()
        y = mesh.vertices[:, 1]
        assert np.abs(colors[y > 0.15] - RED).max(1).mean() < 0.08
        assert np.abs(colors[y < -0.15] - BLUE).max(1).mean() < 0.08


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def textured_sphere() -> trimesh.Trimesh:
    return export_field(RampSphere(), ExportConfig(resolution=32, texture=True, texture_size=64)).mesh


def test_textured_glb_loads_in_trimesh_with_its_texture(tmp_path, textured_sphere):
    path = write_mesh(textured_sphere, tmp_path / "t.glb")
    assert not list(tmp_path.glob(".t*"))  # atomic: no temporary file left
    loaded = trimesh.load(path, force="mesh", process=False)
    assert loaded.visual.kind == "texture"
    assert np.allclose(loaded.visual.uv, textured_sphere.visual.uv, atol=1e-6)  # v flipped twice
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert np.array_equal(image, np.asarray(textured_sphere.visual.material.baseColorTexture))
    gltf, arrays = read_glb(path.read_bytes())
    assert np.allclose(np.linalg.norm(arrays["NORMAL"], axis=1), 1.0, atol=1e-5)
    assert gltf["materials"][0]["extensions"] == {"KHR_materials_unlit": {}}
    assert gltf["materials"][0]["pbrMetallicRoughness"]["metallicFactor"] == 0.0


def test_textured_obj_writes_an_mtl_that_points_at_its_png(tmp_path, textured_sphere):
    path = write_mesh(textured_sphere, tmp_path / "t.obj")
    mtl, png = texture_paths(path)
    assert mtl.is_file() and png.is_file()
    assert f"map_Kd {png.name}" in mtl.read_text().splitlines()
    assert f"mtllib {mtl.name}" in path.read_text().splitlines()
    loaded = trimesh.load(path, force="mesh", process=False)
    assert loaded.visual.kind == "texture"
    assert np.asarray(loaded.visual.material.image).shape[:2] == (64, 64)
    assert len(loaded.faces) == len(textured_sphere.faces)


def test_textured_ply_is_an_input_error(tmp_path, textured_sphere):
    with pytest.raises(InputError, match="PLY"):
        write_mesh(textured_sphere, tmp_path / "t.ply")
    assert not (tmp_path / "t.ply").exists()


def test_vertex_colour_glb_is_linear_and_displays_like_the_texture(tmp_path):
    """A viewer shows sRGB(COLOR_0) for vertex colours and the texel for a texture: equal."""
    field = RampSphere()
    cfg = ExportConfig(resolution=48, max_faces=1500)
    vertex_path = write_mesh(export_field(field, cfg).mesh, tmp_path / "v.glb")
    texture_path = write_mesh(export_field(field, ExportConfig(resolution=48, max_faces=1500, texture=True, texture_size=256)).mesh, tmp_path / "t.glb")

    _, vertex = read_glb(vertex_path.read_bytes())
    data = texture_path.read_bytes()
    gltf, textured = read_glb(data)
    shown_vertex = linear_to_srgb(vertex["COLOR_0"])
    texture = torch.as_tensor(np.asarray(Image.open(io.BytesIO(glb_image(data, gltf))).convert("RGB")), dtype=torch.float32) / 255
    uv = torch.as_tensor(textured["TEXCOORD_0"]).clone()
    uv[:, 1] = 1.0 - uv[:, 1]  # the file's v is down
    shown_texture = sample_texture(texture, uv).numpy()
    # The two files' vertices differ (the atlas splits seams): compare by position, off the seam.
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(vertex["POSITION"]).query(textured["POSITION"])
    off_seam = np.abs(textured["POSITION"][:, 0]) > 0.08  # file x = world y, the colour seam
    gap = np.abs(shown_texture - shown_vertex[nearest]).max(1)[off_seam]
    assert np.median(gap) < 0.02
    assert np.abs(vertex["COLOR_0"] - srgb_to_linear(np.array(RED))).max(1).min() < 0.02  # stored linear


def test_srgb_transfer_functions_are_inverse_and_known():
    x = np.linspace(0, 1, 101)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-12)
    assert srgb_to_linear(np.array(0.5)) == pytest.approx(0.21404, abs=1e-5)


# --------------------------------------------------------------------------- `sjc3d export --texture`


def _export(*args: str):
    from typer.testing import CliRunner

    from sjc3d.cli import app

    return CliRunner().invoke(app, ["export", *args])


def test_export_cli_textured_glb_and_obj(tmp_path):
    run = make_run(tmp_path / "run", input_size=64)
    result = _export(str(run.root), "--mesh", str(tmp_path / "m.glb"), "--resolution", "32", "--texture",
                     "--texture-size", "128", "--max-faces", "800")
    assert result.exit_code == 0, result.output
    assert "128² texture" in result.output and "input-view PSNR" in result.output
    mesh = trimesh.load(tmp_path / "m.glb", force="mesh", process=False)
    assert mesh.visual.kind == "texture" and len(mesh.faces) <= 800
    assert mesh.visual.material.baseColorTexture.size == (128, 128)
    result = _export(str(run.root), "--mesh", str(tmp_path / "m.obj"), "--resolution", "32", "--texture",
                     "--texture-size", "64")
    assert result.exit_code == 0, result.output
    assert all(p.is_file() for p in texture_paths(tmp_path / "m.obj"))


def test_export_cli_texture_flag_errors_are_one_line(tmp_path):
    run = make_run(tmp_path / "run")
    for args, words in (
        (["--mesh", str(tmp_path / "m.ply"), "--texture"], "PLY"),
        (["--mesh", str(tmp_path / "m.glb"), "--texture-size", "8"], "--texture-size"),
    ):
        result = _export(str(run.root), *args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and words in lines[0], result.output
    assert not list(tmp_path.glob("m.*"))

