"""Volume rendering of a radiance field with nerfacc — the one module of sjc3d that imports nerfacc.

Two ways to place samples, one way to composite them (nerfacc's quadrature, Max 1995):

    w_i = T_i (1 − exp(−σ_i δ_i)),  T_i = exp(−Σ_{j<i} σ_j δ_j)
    features = Σ w_i c_i + (1 − Σ w_i) · background,  opacity = Σ w_i,  depth = Σ w_i t_i

* Dense (every device; the only path on CPU): each ray is clipped to the field's box and cut
  into `n_samples` equal intervals; the sample of an interval sits at a random point of it in
  training mode (stratified sampling) and at its middle in eval mode.  Samples form a
  [n_rays, n_samples] batch, and only nerfacc's batched functions are used on it — they are
  plain PyTorch (cumsum), while nerfacc's packed/flattened ops and its estimators need the
  CUDA extension, which must never be triggered on CPU tensors.
  With `skip_empty`, a coarse occupancy grid (pure PyTorch, `occ_resolution`³ cells,
  refreshed by `update`) marks the cells where the field has density; samples in other cells
  are not sent to the field (they keep σ = 0).  The grid is dilated by one cell so a surface
  can still grow into its neighbourhood.  On a CPU this cuts the field queries several-fold;
  gathering the occupied samples is the path's one data-dependent size (a host sync on a GPU,
  where the occupancy-grid path is used anyway).
* Occupancy grid (CUDA, when nerfacc's extension loads): `nerfacc.OccGridEstimator` marches
  rays with a fixed step through cells that are marked occupied, skipping empty space and
  samples with α below `alpha_threshold`; `update(step)` refreshes the grid every
  `occ_update_every` training steps from the field's density.
"""

from __future__ import annotations

import math
import warnings

import nerfacc
import torch
from torch import Tensor, nn

from sjc3d.cameras import camera_rays
from sjc3d.config import RenderConfig
from sjc3d.render.base import RenderOutput

# --------------------------------------------------------------------------- pure functions


def ray_box_intersect(rays_o: Tensor, rays_d: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the box [-bound, bound]³ (slab method).

    rays_o, rays_d: [N, 3] (directions need not be unit; t is in units of |d|).
    Returns t_near, t_far [N]; t_near ≥ 0 (a ray starting inside enters at 0); a ray that misses
    has t_far ≤ t_near.
    """
    # A zero direction component is replaced by a tiny one: its slab is then (−∞, ∞) or empty.
    d = torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (-bound - rays_o) / d
    t1 = (bound - rays_o) / d
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def stratified_intervals(
    t_near: Tensor, t_far: Tensor, n_samples: int, jitter: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut [t_near, t_far] into n equal intervals, one sample in each.

    t_near, t_far: [N].  Returns t_starts, t_ends, t_samples [N, n_samples]; the sample is
    uniformly random inside its interval when `jitter`, else at its middle.
    """
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=t_near.device, dtype=t_near.dtype)
    edges = t_near[:, None] + (t_far - t_near)[:, None] * u  # [N, n + 1]
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if jitter:
        r = torch.rand(t_starts.shape, device=t_near.device, dtype=t_near.dtype, generator=generator)
    else:
        r = torch.full_like(t_starts, 0.5)
    return t_starts, t_ends, t_starts + (t_ends - t_starts) * r


def composite(
    weights: Tensor, features: Tensor, t_samples: Tensor, background: Tensor,
    ray_indices: Tensor | None = None, n_rays: int | None = None,
) -> RenderOutput:
    """Accumulate per-sample weights into a RenderOutput (batched [N, S] or packed [M] samples).

    weights, t_samples: [N, S] or [M]; features: [N, S, C] or [M, C]; background: [C] or [N, C].
    """
    feats = nerfacc.accumulate_along_rays(weights, features, ray_indices, n_rays)
    opacity = nerfacc.accumulate_along_rays(weights, None, ray_indices, n_rays)
    depth = nerfacc.accumulate_along_rays(weights, t_samples[..., None], ray_indices, n_rays)
    return RenderOutput(feats + (1.0 - opacity) * background, opacity, depth, weights.reshape(-1))


def nerfacc_cuda_available() -> bool:
    """True when nerfacc's CUDA extension is (or can be JIT-) built and loaded."""
    if not torch.cuda.is_available():
        return False
    try:
        from nerfacc.cuda import _backend

        return _backend._C is not None
    except Exception as e:  # a failed JIT build raises all sorts of errors
        warnings.warn(f"nerfacc CUDA extension unavailable ({type(e).__name__}: {e}); using dense sampling")
        return False


# --------------------------------------------------------------------------- the renderer


class VolumeRenderer(nn.Module):
    """Renders a radiance field along rays (interface: docs/INTERFACES.md).

    The field is not registered as a submodule: its parameters live in the field's own state
    dict.  The renderer's state is the occupancy grid (occgrid path only).
    """

    def __init__(self, field: nn.Module, cfg: RenderConfig, use_occgrid: bool = False):
        super().__init__()
        self.__dict__["field"] = field  # plain attribute, see the class docstring
        self.cfg = cfg
        self.bound = float(field.bound)
        self.n_channels = int(field.n_channels)
        diagonal = 2.0 * math.sqrt(3.0) * self.bound
        self.step_size = cfg.render_step_size if cfg.render_step_size > 0 else diagonal / 512
        self.estimator = None
        # Dense-path occupancy: all cells occupied until the first refresh.
        r = cfg.occ_resolution
        self.register_buffer("occupied", torch.ones(r, r, r, dtype=torch.bool), persistent=True)
        self.skip_empty = cfg.skip_empty and not use_occgrid
        if use_occgrid:
            b = self.bound
            self.estimator = nerfacc.OccGridEstimator(roi_aabb=[-b, -b, -b, b, b, b], resolution=cfg.occ_resolution)
            self.estimator.to(next(field.parameters()).device)
            # First grid from the initial field (the blob), so the first renders see it.
            self.estimator._update(step=0, occ_eval_fn=self._occupancy, occ_thre=cfg.occ_threshold)
        elif self.skip_empty:
            self.to(next(field.parameters()).device)
            self.refresh_occupancy()

    @property
    def uses_occgrid(self) -> bool:
        return self.estimator is not None

    # ----------------------------------------------------------------- public API

    def render_rays(self, rays_o: Tensor, rays_d: Tensor, background: Tensor) -> RenderOutput:
        """rays_o, rays_d [N, 3] (unit directions), background [C] or [N, C] → flat RenderOutput."""
        background = torch.as_tensor(background, dtype=rays_o.dtype, device=rays_o.device)
        t_near, t_far = ray_box_intersect(rays_o, rays_d, self.bound)
        if self.cfg.near > 0:
            t_near = t_near.clamp_min(self.cfg.near)
        if self.cfg.far > 0:
            t_far = t_far.clamp_max(self.cfg.far)
        if self.estimator is not None:
            return self._render_occgrid(rays_o, rays_d, t_near, t_far, background)
        return self._render_dense(rays_o, rays_d, t_near, t_far, background)

    def render_views(
        self, c2w: Tensor, fov_deg: float, resolution: int, background: Tensor
    ) -> RenderOutput:
        """Render B square images: c2w [B, 4, 4] → RenderOutput with [B, H, W, ...] tensors.

        background: [C] or [B, H, W, C].  Without gradients the rays go in chunks of cfg.chunk.
        """
        rays_o, rays_d = camera_rays(c2w, fov_deg, resolution)
        batch = rays_o.shape[:3]
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        background = torch.as_tensor(background, dtype=rays_o.dtype, device=rays_o.device)
        if background.dim() > 1:
            background = background.reshape(-1, background.shape[-1])
        n = rays_o.shape[0]
        if torch.is_grad_enabled() or n <= self.cfg.chunk:
            return self.render_rays(rays_o, rays_d, background).reshape(*batch)
        parts = []
        for s in range(0, n, self.cfg.chunk):
            bg = background[s : s + self.cfg.chunk] if background.dim() > 1 else background
            parts.append(self.render_rays(rays_o[s : s + self.cfg.chunk], rays_d[s : s + self.cfg.chunk], bg))
        out = RenderOutput(*(torch.cat(xs, dim=0) for xs in zip(*((p.features, p.opacity, p.depth) for p in parts))))
        return out.reshape(*batch)

    def update(self, step: int) -> None:
        """Refresh the occupancy grid every cfg.occ_update_every steps."""
        if self.estimator is None:
            if self.skip_empty and step % self.cfg.occ_update_every == 0:
                self.refresh_occupancy(seed=step)
            return
        self.estimator.train()
        self.estimator.update_every_n_steps(
            step, occ_eval_fn=self._occupancy, occ_thre=self.cfg.occ_threshold, n=self.cfg.occ_update_every
        )

    # ----------------------------------------------------------------- paths

    @torch.no_grad()
    def refresh_occupancy(self, seed: int = 0) -> None:
        """Mark cells whose density (at a random point of each cell, drawn from `seed`) gives a
        dense sample α above `occ_threshold`, then dilate by one cell."""
        r, b = self.occupied.shape[0], self.bound
        device = self.occupied.device
        index = torch.stack(torch.meshgrid(*[torch.arange(r, device=device)] * 3, indexing="ij"), -1).reshape(-1, 3)
        jitter = torch.rand(index.shape, generator=torch.Generator().manual_seed(seed)).to(device)
        points = ((index + jitter) / r * 2.0 - 1.0) * b
        interval = 2.0 * math.sqrt(3.0) * b / self.cfg.n_samples  # the longest dense interval
        density = torch.cat([self.field.density(chunk) for chunk in points.split(self.cfg.chunk)])
        occupied = (density * interval > self.cfg.occ_threshold).float().view(1, 1, r, r, r)
        self.occupied.copy_(torch.nn.functional.max_pool3d(occupied, 3, stride=1, padding=1)[0, 0] > 0)

    def _occupied_samples(self, points: Tensor) -> Tensor:
        """[..., 3] points → [...] bool: inside a cell marked occupied."""
        r = self.occupied.shape[0]
        cell = ((points / self.bound + 1.0) * 0.5 * r).long().clamp(0, r - 1)
        return self.occupied[cell[..., 0], cell[..., 1], cell[..., 2]]

    def _query(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Density [..] and features [.., C] at points [.., 3], skipping empty cells if enabled."""
        flat = points.reshape(-1, 3)
        if not self.skip_empty:
            out = self.field(flat)
            return out.density.view(points.shape[:-1]), out.features.view(*points.shape[:-1], self.n_channels)
        keep = self._occupied_samples(flat).nonzero().squeeze(-1)
        out = self.field(flat[keep])
        density = torch.zeros(flat.shape[0], dtype=out.density.dtype, device=flat.device).index_put((keep,), out.density)
        features = torch.zeros(flat.shape[0], self.n_channels, dtype=out.features.dtype, device=flat.device)
        features = features.index_put((keep,), out.features)
        return density.view(points.shape[:-1]), features.view(*points.shape[:-1], self.n_channels)

    def _render_dense(
        self, rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, background: Tensor
    ) -> RenderOutput:
        # A ray that misses the box gets intervals of length zero: its weights are exactly 0, so it
        # keeps opacity 0 and the background.  Sampling every ray (instead of gathering the rays
        # that hit) keeps the batch's size independent of the data: no host sync on a GPU.
        t_far = torch.maximum(t_far, t_near)
        t_starts, t_ends, t_samples = stratified_intervals(t_near, t_far, self.cfg.n_samples, self.training)
        points = rays_o[:, None, :] + rays_d[:, None, :] * t_samples[..., None]  # [N, S, 3]
        sigmas, features = self._query(points)
        weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
        out = composite(weights, features, t_samples, background)
        return out if torch.is_grad_enabled() else RenderOutput(out.features, out.opacity, out.depth)

    def _render_occgrid(
        self, rays_o: Tensor, rays_d: Tensor, t_near: Tensor, t_far: Tensor, background: Tensor
    ) -> RenderOutput:
        n_rays = rays_o.shape[0]
        field = self.field

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            t = (t_starts + t_ends)[:, None] / 2.0
            return field.density(rays_o[ray_indices] + rays_d[ray_indices] * t)

        ray_indices, t_starts, t_ends = self.estimator.sampling(
            rays_o, rays_d, sigma_fn=sigma_fn, t_min=t_near, t_max=t_far.clamp_min(t_near),
            render_step_size=self.step_size, stratified=self.training, alpha_thre=self.cfg.alpha_threshold,
        )
        t_mid = (t_starts + t_ends) / 2.0
        out = field(rays_o[ray_indices] + rays_d[ray_indices] * t_mid[:, None])
        weights, _, _ = nerfacc.render_weight_from_density(
            t_starts, t_ends, out.density, ray_indices=ray_indices, n_rays=n_rays
        )
        render = composite(weights, out.features, t_mid, background, ray_indices, n_rays)
        return render if torch.is_grad_enabled() else RenderOutput(render.features, render.opacity, render.depth)

    def _occupancy(self, x: Tensor) -> Tensor:
        """Occupancy of grid cells for nerfacc: σ · step size (≈ α of one march step)."""
        return self.field.density(x) * self.step_size

    # ----------------------------------------------------------------- state

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accept a checkpoint written by the other path (dense ⇄ occupancy grid).

        Only the occupancy grid's own entries (`estimator.*`) may be missing or left over: it is
        rebuilt from the field when absent.  Any other mismatch is an error under `strict`.
        """
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("estimator.") or self.estimator is not None}
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = [k for k in result.missing_keys if not k.startswith("estimator.")]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(f"renderer state does not match: Missing key(s) {missing}, "
                               f"Unexpected key(s) {result.unexpected_keys}")
        return result


def build_volume_renderer(field: nn.Module, cfg: RenderConfig, device: torch.device | str = "cpu") -> VolumeRenderer:
    """Choose the sampling path (see module doc) and build the renderer."""
    on_cuda = torch.device(device).type == "cuda"
    use_occgrid = False
    if cfg.estimator == "occgrid":
        if on_cuda and nerfacc_cuda_available():
            use_occgrid = True
        else:
            warnings.warn("render.estimator='occgrid' needs CUDA and nerfacc's CUDA extension; using dense sampling")
    elif cfg.estimator == "auto":
        use_occgrid = on_cuda and nerfacc_cuda_available()
    return VolumeRenderer(field, cfg, use_occgrid=use_occgrid).to(device)
