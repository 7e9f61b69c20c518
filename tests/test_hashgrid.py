"""Hash-grid encoding: level geometry, indexing against a naive reference, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from sjc3d.fields.hashgrid import PRIMES, HashGridEncoding, level_specs, n_encoding_params


def naive_encode(enc: HashGridEncoding, x: torch.Tensor) -> torch.Tensor:
    """Point-by-point, corner-by-corner reference written from the paper's definition."""
    planes = enc.planes.detach()
    T = 1 << enc.log2_hashmap_size
    # Rows of each level in the table: hashed levels first, then dense ones (HashGridEncoding doc).
    order = [i for i, s in enumerate(enc.specs) if not s.dense] + [i for i, s in enumerate(enc.specs) if s.dense]
    offset, row = {}, 0
    for i in order:
        offset[i] = row
        row += enc.specs[i].n_rows
    out = torch.zeros(x.shape[0], enc.n_levels, planes.shape[0], dtype=planes.dtype)
    for n, p in enumerate(x.tolist()):
        for level, spec in enumerate(enc.specs):
            pos = [c * spec.scale + 0.5 for c in p]
            base = [math.floor(c) for c in pos]
            frac = [c - b for c, b in zip(pos, base)]
            for corner in range(8):
                bits = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
                v = [b + o for b, o in zip(base, bits)]
                weight = math.prod(f if o else 1 - f for f, o in zip(frac, bits))
                if spec.dense:  # a corner one past the grid wraps into the next row, as in tcnn
                    local = (v[0] + v[1] * spec.resolution + v[2] * spec.resolution**2) % spec.n_rows
                else:
                    local = ((v[0] * PRIMES[0]) ^ (v[1] * PRIMES[1]) ^ (v[2] * PRIMES[2])) % T
                out[n, level] += weight * planes[:, offset[level] + local]
    return out.reshape(x.shape[0], -1)


def test_level_specs_follow_tcnn_geometry():
    specs = level_specs(16, 16, 1.447269237440378, 19)
    assert specs[0].resolution == 16 and specs[0].dense  # scale 15 → 16 vertices per side
    assert [s.dense for s in specs[:5]] == [True] * 5 and not any(s.dense for s in specs[5:])
    assert all(s.n_rows == 2**19 for s in specs[5:])
    assert all(s.n_rows % 8 == 0 and s.n_rows >= s.resolution**3 for s in specs[:5])
    assert specs[-1].resolution == pytest.approx(4096, rel=0.01)  # 16 · 1.447^15 ≈ 4096
    total = n_encoding_params(specs, 2)
    assert total == 2 * (sum(s.n_rows for s in specs[:5]) + 11 * 2**19)


def test_init_and_shapes():
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4)
    assert enc.planes.shape == (2, enc.n_rows)
    assert enc.planes.abs().max() <= 1e-4 and enc.planes.std() > 1e-5
    y = enc(torch.rand(37, 3))
    assert y.shape == (37, 8) and y.dtype == torch.float32


@pytest.mark.parametrize("log2", [6, 12])  # 6: mostly hashed levels; 12: mostly dense levels
def test_matches_naive_reference(log2):
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=4, n_features_per_level=2, log2_hashmap_size=log2, base_resolution=3,
                           per_level_scale=1.9).double()
    assert any(s.dense for s in enc.specs) and (log2 == 12 or any(not s.dense for s in enc.specs))
    with torch.no_grad():
        enc.planes.uniform_(-1, 1)
    x = torch.rand(23, 3, dtype=torch.float64)
    x[0] = 1.0  # the far faces of the cube: dense corners one past the grid wrap around
    x[1] = 0.0
    assert torch.allclose(enc(x), naive_encode(enc, x), atol=1e-12)


def test_interpolation_is_continuous():
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=3, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0).double()
    with torch.no_grad():
        enc.planes.uniform_(-1, 1)
    x = torch.rand(50, 3, dtype=torch.float64) * 0.9 + 0.05
    eps = 1e-7
    assert (enc(x + eps) - enc(x)).abs().max() < 1e-4  # no jumps across cell boundaries


def test_gradcheck_table_and_positions():
    torch.manual_seed(0)
    enc = HashGridEncoding(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2,
                           per_level_scale=2.0).double()
    assert [s.dense for s in enc.specs] == [True, True, False]
    with torch.no_grad():
        enc.planes.uniform_(-1, 1)
    x = (torch.rand(6, 3, dtype=torch.float64) * 0.9 + 0.05).requires_grad_(True)
    planes = enc.planes.detach().clone().requires_grad_(True)

    def f(p, pts):
        return torch.func.functional_call(enc, {"planes": p}, (pts,))

    assert torch.autograd.gradcheck(f, (planes, x))


def test_table_gradient_counts_shared_rows():
    """Two points in the same cell add their weights into the same rows."""
    enc = HashGridEncoding(n_levels=1, n_features_per_level=1, log2_hashmap_size=8, base_resolution=4)
    x = torch.tensor([[0.4, 0.4, 0.4], [0.4, 0.4, 0.4]])
    enc(x).sum().backward()
    grad = enc.planes.grad
    assert torch.allclose(grad.sum(), torch.tensor(2.0))  # weights of each point sum to 1
    assert (grad > 0).sum() == 8


def test_large_grid_runs_with_default_config():
    torch.manual_seed(0)
    enc = HashGridEncoding()  # 16 levels, 2^19 table
    x = torch.rand(4096, 3)
    y = enc(x)
    y.square().sum().backward()
    assert y.shape == (4096, 32)
    assert enc.planes.grad is not None and enc.planes.grad.abs().sum() > 0
