"""Multi-resolution hash encoding (instant-NGP, Müller et al. 2022) in pure PyTorch.

A point x ∈ [0, 1]³ is looked up in L grids of growing resolution.  On each level the point
falls in a cell; the features stored at the cell's 8 corners are blended trilinearly, and the
L blended feature vectors are concatenated into an encoding of size L · F.

Level geometry, indexing and hash are tiny-cuda-nn's, bit for bit, so that both backends see
the same grids and a table converts between them (sjc3d/fields/portable.py):

    scale_l      = exp2(l · log2(per_level_scale)) · base_resolution − 1   (float32, as tcnn)
    resolution_l = ceil(scale_l) + 1                       (vertices per side)
    pos          = x · scale_l + 0.5                       (grid coordinates of x)

A coarse level whose resolution_l³ vertices fit in the table is stored densely: vertex
(i, j, k) is row (i + j·R + k·R²) mod n_rows_l, n_rows_l = R³ rounded up to a multiple of 8.
The modulo matters on the far faces of the cube: the +0.5 offset can put a cell's upper corner
at i = R, one past the grid, and tcnn then wraps into the next row rather than clamping
(tiny-cuda-nn's `pos_fract` comment: "the offset can cause wraparound indexing in dense grids").
Finer levels share 2^log2_hashmap_size rows through the spatial hash of the paper,
h(i, j, k) = (i·π₁ ⊕ j·π₂ ⊕ k·π₃) mod T with π = (1, 2654435761, 805459861), products taken
mod 2³².  Collisions are not resolved: the MLP behind the encoding learns to ignore them.

Layout and speed (this is the CPU backend; every pass over memory counts, and the random reads
and writes into the table dominate):

* One parameter `planes` [F, n_rows]: feature-major, so that the table gradient can be built
  with 1-D `index_add_` (CPU's 2-D `index_add_` adds one row slice at a time: ~10x slower) and
  needs no transpose.  Hashed levels come first, level j at rows [j·T, (j+1)·T): the offset
  j·T has no bits below log2(T), so it is OR-ed into the x-term before the three terms are
  XOR-ed (the XOR never touches those bits).  Dense levels follow.
* All levels at once.  Corner indices and weights are built corner-major ([L, 8, N], points
  innermost, so every broadcast runs over long contiguous rows) from per-axis terms of the two
  corners of each axis ([L, 3, 2, N], cheap).  Inputs beyond 65,536 points are encoded in
  chunks, so that the big temporaries stay small enough for the allocator to recycle.
* Indices are int32 whenever the table has fewer than 2³¹ rows (half the memory traffic).
* Gather, weight and sum over the 8 corners, and the backward scatter, live in a small
  autograd Function (autograd's own backward of a gather is a 2-D scatter: ~10x slower on
  CPU).  The table gradient is a serial 1-D `index_add_` per plane, the planes in two threads;
  only when the positions need a gradient (normals) does the backward gather the corner
  values for the weights.  The trilinear weights are ordinary autograd ops, so the position
  gradient comes out of autograd.  Measured alternatives that lost: `embedding_bag` (needs a
  point-major transpose of indices and weights), complex-view and 2-D `index_add_`.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

PRIMES = (1, 2654435761, 805459861)


@dataclass(frozen=True)
class LevelSpec:
    """Geometry of one grid level."""

    scale: float  # pos = x · scale + 0.5
    resolution: int  # vertices per side
    n_rows: int  # rows this level owns in the table
    dense: bool  # True: row = i + j·R + k·R²; False: spatial hash


def level_specs(
    n_levels: int, base_resolution: int, per_level_scale: float, log2_hashmap_size: int
) -> list[LevelSpec]:
    """The L levels of a grid, coarse to fine (tiny-cuda-nn's conventions, see module doc)."""
    table_size = 1 << log2_hashmap_size
    # tcnn's grid_scale() in float32 (common_device.h): a level's resolution is a ceil(), so a
    # float64 formula could land one vertex away from tcnn's on a scale near an integer.
    log2_scale = np.log2(np.float32(per_level_scale))
    specs = []
    for level in range(n_levels):
        scale = float(np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - np.float32(1.0))
        resolution = math.ceil(scale) + 1
        n_vertices = resolution**3
        dense = n_vertices <= table_size
        # Dense rows rounded up to a multiple of 8 (tcnn aligns its levels the same way).
        n_rows = -(-n_vertices // 8) * 8 if dense else table_size
        specs.append(LevelSpec(scale, resolution, n_rows, dense))
    return specs


def n_encoding_params(specs: list[LevelSpec], n_features_per_level: int) -> int:
    """Number of trainable values of a grid (what tcnn reports for the same hyper-parameters)."""
    return sum(s.n_rows for s in specs) * n_features_per_level


def row_offsets(specs: list[LevelSpec]) -> list[int]:
    """First row of each level in this backend's table: hashed levels first, then dense ones.

    A hashed level's offset j·T then has no bits below log2(T), so it can be OR-ed into the
    hash (see `HashGridEncoding.corner_indices`).
    """
    offsets, row = [0] * len(specs), 0
    for level in [i for i, s in enumerate(specs) if not s.dense] + [i for i, s in enumerate(specs) if s.dense]:
        offsets[level] = row
        row += specs[level].n_rows
    return offsets


# --------------------------------------------------------------------------- the autograd op

_POOL: ThreadPoolExecutor | None = None


def _map_features(fn, n_features: int) -> list:
    """Run fn(f) for every feature plane; in two threads on CPU.

    The scatter of the backward pass is a serial loop inside PyTorch (`index_add_` on CPU has
    no parallel path), while each feature plane is separate memory: one Python thread per plane
    (the op releases the GIL) uses the second core.
    """
    global _POOL
    if n_features < 2 or torch.get_num_threads() < 2:
        return [fn(f) for f in range(n_features)]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sjc3d-hashgrid")
    return list(_POOL.map(fn, range(n_features)))


class _InterpolatePlanes(torch.autograd.Function):
    """out[f, l, n] = Σ_c w[l, c, n] · planes[f, idx[l, c, n]]  — gather-and-blend, fast CPU backward.

    planes [F, n_rows], idx [L, 8, N] int, w [L, 8, N]  →  out [F, L, N].

    The gathers and scatters go one level at a time: the temporaries are then 1/L of the size
    (small blocks are recycled by the allocator instead of being mapped and page-faulted afresh
    on every call), and each op stays inside one level's slice of the table.
    """

    @staticmethod
    def forward(ctx, planes: Tensor, idx: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(planes, idx, w)
        n_features, n_levels = planes.shape[0], idx.shape[0]
        out = w.new_empty(n_features, n_levels, w.shape[2])

        def gather(f: int) -> None:  # one feature plane per thread, like the backward scatter
            with torch.no_grad():  # grad mode is per thread
                for level in range(n_levels):
                    corner_values = planes[f].index_select(0, idx[level].reshape(-1)).view_as(w[level])  # [8, N]
                    torch.sum(corner_values.mul_(w[level]), dim=0, out=out[f, level])

        _map_features(gather, n_features)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        planes, idx, w = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # it arrives permuted: strided reads would be ~10x slower
        n_features, n_levels = planes.shape[0], idx.shape[0]
        grad_planes = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_planes = torch.zeros_like(planes)

            def scatter(f: int) -> None:  # grad[f, idx[l, c, n]] += w[l, c, n] · grad_out[f, l, n]
                with torch.no_grad():  # grad mode is per thread
                    for level in range(n_levels):
                        src = w[level] * grad_out[f, level]  # [8, N]
                        grad_planes[f].index_add_(0, idx[level].reshape(-1), src.reshape(-1))

            _map_features(scatter, n_features)
        if ctx.needs_input_grad[2]:
            grad_w = torch.zeros_like(w)
            for f in range(n_features):
                for level in range(n_levels):
                    corner_values = planes[f].index_select(0, idx[level].reshape(-1)).view_as(w[level])
                    grad_w[level] += corner_values * grad_out[f, level]
        return grad_planes, None, grad_w


# --------------------------------------------------------------------------- the encoding


class HashGridEncoding(nn.Module):
    """x [N, 3] in [0, 1]³ → features [N, n_levels · n_features_per_level].

    Points outside [0, 1]³ are clamped onto the cube (the field zeroes their density anyway).
    """

    def __init__(
        self,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447269237440378,
        init_scale: float = 1e-4,
    ):
        super().__init__()
        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.specs = level_specs(n_levels, base_resolution, per_level_scale, log2_hashmap_size)
        self.n_output_dims = n_levels * n_features_per_level
        table_size = 1 << log2_hashmap_size

        offsets = row_offsets(self.specs)
        self.n_rows = sum(s.n_rows for s in self.specs)
        # Dense levels are the coarse ones, so levels [0, n_dense) are dense, the rest hashed.
        dense = [i for i, s in enumerate(self.specs) if s.dense]
        self.n_dense = len(dense)
        assert dense == list(range(self.n_dense)), "resolution grows with the level"
        self.index_dtype = torch.int32 if self.n_rows < 2**31 else torch.int64

        self.planes = nn.Parameter(torch.empty(n_features_per_level, self.n_rows))
        nn.init.uniform_(self.planes, -init_scale, init_scale)

        specs = self.specs
        self.register_buffer("scales", torch.tensor([s.scale for s in specs], dtype=torch.float64), persistent=False)
        # Per-level integer multipliers of the three axes and the row offset folded into x.
        mult = [[1, s.resolution, s.resolution**2] if s.dense else list(PRIMES) for s in specs]
        self.register_buffer("axis_mult", torch.tensor(mult, dtype=torch.int64), persistent=False)  # [L, 3]
        self.register_buffer("row_offset", torch.tensor(offsets, dtype=torch.int64), persistent=False)  # [L]
        self.register_buffer("level_rows", torch.tensor([s.n_rows for s in specs], dtype=torch.int64), persistent=False)
        self.hash_mask = table_size - 1
        self.chunk = 65536  # points per pass (see forward)

    def extra_repr(self) -> str:
        return (
            f"levels={self.n_levels} (dense {self.n_dense}), features={self.n_features_per_level}, "
            f"table=2^{self.log2_hashmap_size}, rows={self.n_rows}"
        )

    # ----------------------------------------------------------------- checkpoints (portable.py)

    backend = "torch"

    @property
    def grid_parameter(self) -> nn.Parameter:
        return self.planes

    def grid_record(self) -> dict:
        from sjc3d.fields.portable import grid_record

        return grid_record(self.backend, self.specs, self.n_features_per_level, self.log2_hashmap_size)

    def get_extra_state(self) -> dict:
        """Saved with the table: the backend that wrote it and its geometry."""
        return self.grid_record()

    def set_extra_state(self, state: dict) -> None:
        self.loaded_from = state.get("backend", self.backend)  # the backend a loaded table was trained on

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from sjc3d.fields.portable import adopt_grid_state

        adopt_grid_state(state_dict, prefix, self)  # a tcnn table becomes planes
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ----------------------------------------------------------------- pieces (pure tensor math)

    def corner_indices(self, cell: Tensor) -> Tensor:
        """Table rows of the 8 corners of each point's cell.

        cell: [L, 3, N] int64 lower corner of each cell.  Returns [L, 8, N] (index_dtype), corner
        c = 4·cx + 2·cy + cz.
        """
        L, _, N = cell.shape
        nd, dt = self.n_dense, self.index_dtype
        terms = torch.empty(L, 3, 2, N, dtype=dt, device=cell.device)  # per-axis terms of both corners
        if nd > 0:  # dense: row = (i + j·R + k·R²) mod n_rows + offset (the modulo comes below)
            mult = self.axis_mult[:nd, :, None]
            terms[:nd, :, 0] = cell[:nd] * mult
            terms[:nd, :, 1] = (cell[:nd] + 1) * mult
        if nd < L:  # hashed: (i·π₁ ⊕ j·π₂ ⊕ k·π₃) mod T; (i+1)·π ≡ i·π + π, so corner 1 is one add
            primes = self.axis_mult[nd:, :, None]
            h0 = (cell[nd:] * primes) & self.hash_mask  # int64: the products exceed 32 bits
            terms[nd:, :, 0] = h0
            terms[nd:, :, 1] = (h0 + (primes & self.hash_mask)) & self.hash_mask
            terms[nd:, 0] |= self.row_offset[nd:, None, None].to(dt)  # offset bits lie above the mask
        out = torch.empty(L, 2, 2, 2, N, dtype=dt, device=cell.device)
        tx, ty, tz = terms.unbind(1)  # [L, 2, N] each
        if nd > 0:
            dense = out[:nd]
            torch.add((tx[:nd, :, None] + ty[:nd, None])[:, :, :, None], tz[:nd, None, None], out=dense)
            # A corner at i = R (or j, k) wraps into the next row, as in tcnn (module doc).
            dense.remainder_(self.level_rows[:nd, None, None, None, None].to(dt))
            dense += self.row_offset[:nd, None, None, None, None].to(dt)
        if nd < L:
            torch.bitwise_xor((tx[nd:, :, None] ^ ty[nd:, None])[:, :, :, None], tz[nd:, None, None], out=out[nd:])
        return out.view(L, 8, N)

    @staticmethod
    def trilinear_weights(frac: Tensor) -> Tensor:
        """frac [L, 3, N] position inside the cell → corner weights [L, 8, N] (same corner order)."""
        wx, wy, wz = torch.stack([1.0 - frac, frac], dim=2).unbind(1)  # [L, 2, N] each
        w = (wx[:, :, None] * wy[:, None])[:, :, :, None] * wz[:, None, None]
        return w.reshape(frac.shape[0], 8, frac.shape[2])

    # ----------------------------------------------------------------- forward

    def forward(self, x: Tensor) -> Tensor:
        """x [N, 3] in [0, 1]³ → [N, n_levels · n_features_per_level] (level-major features)."""
        x = x.clamp(0.0, 1.0).to(self.planes.dtype)
        if x.shape[0] <= self.chunk:
            return self._encode(x)
        # Chunks keep every [L, 8, N] temporary small enough for the allocator to recycle it.
        return torch.cat([self._encode(part) for part in x.split(self.chunk)])

    def _encode(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        pos = x.t()[None] * self.scales.to(x.dtype)[:, None, None] + 0.5  # [L, 3, N]
        cell = pos.detach().floor()
        idx = self.corner_indices(cell.long())  # [L, 8, N]
        w = self.trilinear_weights(pos - cell)  # [L, 8, N]
        out = _InterpolatePlanes.apply(self.planes, idx, w)  # [F, L, N]
        return out.permute(2, 1, 0).reshape(n, self.n_output_dims)
