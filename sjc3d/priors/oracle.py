"""The oracle prior: a perfect denoiser for one known object.

If the data distribution is a single object seen from a given pose, the ideal denoiser returns
that view whatever the noise: D(z, σ) = x_pose.  Plugged into the SJC engine in place of
Zero-1-to-3, it turns fitting into a measurable problem — the field should converge to the true
shape — and so validates cameras, rendering, score chaining and export end to end, without
model weights (DESIGN.md §6).

The oracle receives the *relative* Zero-1-to-3 pose embedding, as the real prior does, and
rebuilds the target camera from it and the input camera itself — with closed-form axes of its
own (`SphericalCamera`), not `sjc3d.cameras.look_at` — then rasterises the mesh
(`sjc3d.mesh_raster`, which shares no code with the NeRF renderer).  A sign error in
`zero123_pose` or in the NeRF's cameras therefore shows up as a wrong shape instead of
cancelling out.

Model space: in `rgb` mode the image itself ([B, 3, H, W] in [−1, 1]); in `latent` mode the
scaled latents of a Stable Diffusion VAE (that of `prior.vae_source`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from sjc3d.errors import InputError
from sjc3d.image import InputView
from sjc3d.mesh_raster import rasterize
from sjc3d.metrics import load_mesh
from sjc3d.priors import vae as vae_io
from sjc3d.sjc import ddpm_alphas_cumprod, ve_sigmas

# OBJ/GLB files are y-up with the front facing +z.  The world is z-up and the input camera sits
# on +x: the cyclic permutation (x, y, z) → (z, x, y) maps up to +z and the front to +x.
Y_UP_TO_WORLD = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
LIGHT_DIRECTION = np.array([0.6, 0.3, 0.75])  # fixed in the world, so colour is view-independent
AMBIENT = 0.35
DEFAULT_ALBEDO = np.array([0.75, 0.62, 0.45])
ORACLE_SIZE = 1.0  # longest side of the object's bounding box, in scene units


def load_world_mesh(path: str | Path, y_up: bool = True) -> trimesh.Trimesh:
    """Load a mesh into the sjc3d world: z-up, front toward +x, centred, longest side 1.

    Vertex colours come from the file's texture or colours when it has them.
    """
    mesh = load_mesh(path)
    colors = vertex_albedo(mesh)
    mesh = trimesh.Trimesh(mesh.vertices.copy(), mesh.faces.copy(), vertex_colors=colors, process=False)
    if y_up:
        mesh.apply_transform(_homogeneous(Y_UP_TO_WORLD))
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(ORACLE_SIZE / float((hi - lo).max()))
    return mesh


def _homogeneous(rotation: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation
    return m


def vertex_albedo(mesh: trimesh.Trimesh) -> np.ndarray:
    """[V, 4] uint8 colours from a texture or vertex colours; a warm grey when there are none."""
    try:
        visual = mesh.visual if mesh.visual.kind == "vertex" else mesh.visual.to_color()
        colors = np.asarray(visual.vertex_colors)
        if colors.shape[0] == len(mesh.vertices) and np.ptp(colors[:, :3]) > 0:
            return colors
    except Exception:  # no texture image, missing UVs ...: fall back to a plain albedo
        pass
    rgba = np.append((DEFAULT_ALBEDO * 255).astype(np.uint8), 255)
    return np.tile(rgba, (len(mesh.vertices), 1))


def shaded_colors(mesh: trimesh.Trimesh) -> Tensor:
    """Per-vertex colour [V, 3]: albedo × (ambient + diffuse) under a fixed world light."""
    light = LIGHT_DIRECTION / np.linalg.norm(LIGHT_DIRECTION)
    lambert = np.clip(mesh.vertex_normals @ light, 0.0, 1.0)
    albedo = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    shade = AMBIENT + (1.0 - AMBIENT) * lambert
    return torch.from_numpy(albedo * shade[:, None]).float()


@dataclass
class SphericalCamera:
    """A camera looking at the origin, z up (DESIGN.md §3), with closed-form axes.

    centre c = r·(sin θ cos φ, sin θ sin φ, cos θ) for polar θ, azimuth φ; right = ∂c/∂φ
    normalised = (−sin φ, cos φ, 0); up = −∂c/∂θ normalised = (−cos θ cos φ, −cos θ sin φ, sin θ);
    the camera looks along −c (OpenGL: its +z axis is c/r).
    """

    polar: float  # radians from +z
    azimuth: float  # radians from +x toward +y
    radius: float

    def c2w(self) -> Tensor:
        st, ct = math.sin(self.polar), math.cos(self.polar)
        sp, cp = math.sin(self.azimuth), math.cos(self.azimuth)
        back = torch.tensor([st * cp, st * sp, ct])
        m = torch.eye(4)
        m[:3, 0] = torch.tensor([-sp, cp, 0.0])
        m[:3, 1] = torch.tensor([-ct * cp, -ct * sp, st])
        m[:3, 2] = back
        m[:3, 3] = back * self.radius
        return m


@dataclass
class TruthView:
    """rgb [H, W, 3] on white, alpha [H, W] coverage in [0, 1]."""

    rgb: Tensor
    alpha: Tensor


def render_truth(vertices: Tensor, faces: Tensor, colors: Tensor, camera: SphericalCamera, fov_deg: float,
                 size: int, supersample: int = 4) -> TruthView:
    """Anti-aliased view of a vertex-coloured mesh: rasterise at `supersample`× and box-filter."""
    raster = rasterize(vertices, faces, camera.c2w(), fov_deg, size * supersample)
    hit = raster.mask
    rgb = torch.ones(*hit.shape, 3)
    rgb[hit] = (colors[faces[raster.face[hit]]] * raster.bary[hit][..., None]).sum(1)
    rgba = torch.cat([rgb, hit[..., None].float()], -1).permute(2, 0, 1)[None]
    low = F.avg_pool2d(rgba, supersample)[0].permute(1, 2, 0)
    return TruthView(low[..., :3].contiguous(), low[..., 3].contiguous())


def camera_from_pose(pose: Tensor, input_polar: float, input_radius: float) -> SphericalCamera:
    """Target camera of a Zero-1-to-3 embedding [Δpolar, sin Δφ, cos Δφ, Δr] (input at φ = 0)."""
    d_polar, sin_az, cos_az, d_radius = (float(x) for x in pose)
    return SphericalCamera(input_polar + d_polar, math.atan2(sin_az, cos_az), input_radius + d_radius)


class OraclePrior:
    """Ground-truth denoiser for `mesh`; see the module docstring.  Implements `Prior`."""

    def __init__(
        self,
        mesh: trimesh.Trimesh,
        fov_deg: float,
        space: str = "rgb",
        vae: torch.nn.Module | None = None,
        supersample: int = 4,
        device: str | torch.device = "cpu",
    ):
        if space == "latent" and vae is None:
            raise InputError("the oracle in latent mode needs a VAE: set prior.vae_source to a Zero-1-to-3 model")
        self.mesh = mesh
        self.fov_deg = fov_deg
        self.space = space
        self.vae = vae
        self.supersample = supersample
        self.device = torch.device(device)
        self.n_channels = int(vae.config.latent_channels) if space == "latent" else 3
        self.latent_factor = vae_io.latent_factor(vae) if space == "latent" else 1
        # The VAE encodes images of its training size (256² for Zero-1-to-3); RGB space takes any.
        self.encode_size = int(vae.config.sample_size) if space == "latent" else None
        self.sigmas = ve_sigmas(ddpm_alphas_cumprod()).float()
        self._vertices = torch.from_numpy(np.asarray(mesh.vertices)).float()
        self._faces = torch.from_numpy(np.asarray(mesh.faces)).long()
        self._colors = shaded_colors(mesh)
        self.input_polar = math.pi / 2
        self.input_radius = 2.0

    # ---------------------------------------------------------------- the Prior interface

    def condition(self, image: Tensor, elevation_deg: float, radius: float) -> None:
        """Remember the input camera; the image itself is not needed (the oracle knows the truth)."""
        self.input_polar = math.radians(90.0 - elevation_deg)
        self.input_radius = radius

    @torch.no_grad()
    def denoise(self, z: Tensor, sigma: Tensor, pose: Tensor, guidance_scale: float = 1.0,
                guidance_min_t: int = 0) -> Tensor:
        """The true view at each pose, in model space at z's resolution, whatever z, σ and guidance are."""
        size = z.shape[-1] * self.latent_factor
        views = [self.render(camera_from_pose(p, self.input_polar, self.input_radius), size).rgb for p in pose.cpu()]
        return self.encode(torch.stack(views).to(self.device)).to(z.dtype)

    def encode(self, rgb: Tensor) -> Tensor:
        if self.space == "latent":
            return vae_io.encode_scaled(self.vae, rgb)
        return vae_io.to_vae_input(rgb)

    def decode(self, z: Tensor) -> Tensor:
        if self.space == "latent":
            with torch.no_grad():
                return vae_io.decode_scaled(self.vae, z)
        return vae_io.from_vae_output(z)

    # ---------------------------------------------------------------- ground truth views

    def render(self, camera: SphericalCamera, size: int) -> TruthView:
        return render_truth(self._vertices, self._faces, self._colors, camera, self.fov_deg, size, self.supersample)

    def input_view(self, size: int = 256) -> InputView:
        """The oracle's own input photo: the true view at the input camera, on white."""
        raster = self.render(SphericalCamera(self.input_polar, 0.0, self.input_radius), size)
        return InputView(rgb=raster.rgb, mask=raster.alpha)

