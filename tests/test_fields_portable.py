"""Checkpoints that travel between hash-grid backends: tinycudann's table layout ⇄ the torch grid's.

The tcnn side is written here by hand from tiny-cuda-nn's source (include/tiny-cuda-nn/
encodings/grid.h and common_device.h), not from sjc3d's code: per level, params_in_level =
min(next_multiple(R³, 8), 2^log2_hashmap_size), levels stored one after the other; vertex
(i, j, k) of a level is row (i + j·R + k·R²) mod params_in_level when R³ fits, else
(i ⊕ j·2654435761 ⊕ k·805459861) mod 2³² mod 2^log2; features interleaved, so value f of row r
of level l sits at (offset_l + r)·F + f; scale_l = exp2f(l·log2f(per_level_scale))·base − 1,
R = ceil(scale) + 1, pos = x·scale + 0.5.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sjc3d.config import FieldConfig
from sjc3d.errors import InputError
from sjc3d.fields import build_field
from sjc3d.fields.hashgrid import HashGridEncoding
from sjc3d.fields.portable import planes_to_tcnn, port_optimizer_state, tcnn_to_planes

# 4 levels × 2 features, table 2^8: resolutions 3, 6 (dense; 27 → 32 rows, 216 rows), 12, 24 (hashed).
GEOMETRY = dict(n_levels=4, n_features_per_level=2, log2_hashmap_size=8, base_resolution=3, per_level_scale=2.0)
FIELD = dict(GEOMETRY, hidden_dim=16)


# --------------------------------------------------------------------------- tcnn, by hand


class TcnnTable:
    """tiny-cuda-nn's reading of a flat HashGrid parameter vector (see the module doc)."""

    PRIMES = (1, 2654435761, 805459861)

    def __init__(self, n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale):
        self.F, self.T = n_features_per_level, 2**log2_hashmap_size
        log2_scale = np.log2(np.float32(per_level_scale))
        self.scales = [float(np.exp2(np.float32(l) * log2_scale) * np.float32(base_resolution) - np.float32(1))
                       for l in range(n_levels)]
        self.R = [math.ceil(s) + 1 for s in self.scales]
        self.rows = [min((r**3 + 7) // 8 * 8, self.T) for r in self.R]
        self.offsets = [sum(self.rows[:l]) for l in range(n_levels)]
        self.n_params = sum(self.rows) * self.F

    def slot(self, level: int, vertex: tuple[int, int, int], feature: int) -> int:
        i, j, k = vertex
        R, rows = self.R[level], self.rows[level]
        if R**3 <= rows:
            row = (i + j * R + k * R * R) % rows
        else:
            row = ((i * self.PRIMES[0]) ^ (j * self.PRIMES[1]) ^ (k * self.PRIMES[2])) % 2**32 % rows
        return (self.offsets[level] + row) * self.F + feature

    def encode(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Point by point, corner by corner: [N, 3] in [0, 1]³ → [N, L·F] (float64)."""
        values = params.double().tolist()
        out = torch.zeros(x.shape[0], len(self.R) * self.F, dtype=torch.float64)
        for n, point in enumerate(x.tolist()):
            for level, scale in enumerate(self.scales):
                pos = [c * scale + 0.5 for c in point]
                cell = [math.floor(p) for p in pos]
                frac = [p - c for p, c in zip(pos, cell)]
                for corner in range(8):
                    bits = [(corner >> d) & 1 for d in range(3)]
                    weight = math.prod(f if b else 1 - f for f, b in zip(frac, bits))
                    vertex = tuple(c + b for c, b in zip(cell, bits))
                    for f in range(self.F):
                        out[n, level * self.F + f] += weight * values[self.slot(level, vertex, f)]
        return out


def torch_grid() -> HashGridEncoding:
    return HashGridEncoding(**GEOMETRY)


def tcnn_state(params: torch.Tensor, prefix: str = "") -> dict:
    """A state dict as TcnnHashGridEncoding writes it (its module `encoding` is tcnn.Encoding)."""
    table = TcnnTable(**GEOMETRY)
    record = {"backend": "tcnn", "n_levels": 4, "n_features_per_level": 2, "log2_hashmap_size": 8,
              "resolutions": table.R}
    return {prefix + "encoding.params": params, prefix + "_extra_state": record}


# --------------------------------------------------------------------------- the layout


def test_geometry_and_sizes_match_tcnns():
    table, grid = TcnnTable(**GEOMETRY), torch_grid()
    assert table.R == [3, 6, 12, 24] and table.rows == [32, 216, 256, 256] and table.offsets == [0, 32, 248, 504]
    assert [s.resolution for s in grid.specs] == table.R
    assert [s.n_rows for s in grid.specs] == table.rows
    assert grid.planes.numel() == table.n_params == 1520


def test_values_placed_in_tcnn_layout_are_read_at_their_vertices():
    """One value per level at a chosen vertex; the torch grid must return it there, in its column."""
    table = TcnnTable(**GEOMETRY)
    params = torch.zeros(table.n_params)
    chosen = {0: ((1, 2, 1), 1, 0.5), 1: ((4, 1, 3), 0, -0.25), 2: ((7, 9, 2), 1, 0.75), 3: ((20, 3, 11), 0, 2.0)}
    for level, (vertex, feature, value) in chosen.items():
        params[table.slot(level, vertex, feature)] = value
    grid = torch_grid()
    grid.load_state_dict(tcnn_state(params))
    assert grid.loaded_from == "tcnn"
    for level, (vertex, feature, value) in chosen.items():
        x = torch.tensor([[(c - 0.5) / table.scales[level] for c in vertex]])  # pos = vertex exactly
        y = grid(x)[0].view(4, 2)
        assert y[level, feature].item() == pytest.approx(value, abs=1e-5), level
        assert y[level, 1 - feature].item() == pytest.approx(0.0, abs=1e-6), level  # features not swapped


def test_a_dense_corner_past_the_grid_wraps_like_tcnn():
    """x = 1 on level 0 (scale 2): pos 2.5, the upper corner i = 3 = R is row (3 + j·3 + k·9) mod 32."""
    table = TcnnTable(**GEOMETRY)
    params = torch.zeros(table.n_params)
    params[table.slot(0, (3, 1, 1), 0)] = 1.0  # = vertex (0, 2, 1) of level 0
    grid = torch_grid()
    grid.load_state_dict(tcnn_state(params))
    x = torch.tensor([[1.0, 0.5 / table.scales[0], 0.5 / table.scales[0]]])  # pos (2.5, 1, 1)
    assert grid(x)[0, 0].item() == pytest.approx(0.5, abs=1e-6)  # half of the wrapped corner's value


def test_random_table_matches_the_hand_written_tcnn_reading():
    torch.manual_seed(0)
    table = TcnnTable(**GEOMETRY)
    params = torch.empty(table.n_params).uniform_(-1, 1)
    grid = torch_grid()
    grid.load_state_dict(tcnn_state(params))
    x = torch.rand(40, 3)
    x[0], x[1], x[2, 0], x[3, 1] = 1.0, 0.0, 1.0, 1.0  # corners and faces of the cube
    torch.testing.assert_close(grid(x).double(), table.encode(params, x), atol=2e-6, rtol=0)


def test_conversions_round_trip_exactly():
    torch.manual_seed(1)
    specs = torch_grid().specs
    params = torch.randn(1520)
    torch.testing.assert_close(planes_to_tcnn(tcnn_to_planes(params, specs, 2), specs), params, rtol=0, atol=0)
    planes = torch.randn(2, 760)
    torch.testing.assert_close(tcnn_to_planes(planes_to_tcnn(planes, specs), specs, 2), planes, rtol=0, atol=0)


# --------------------------------------------------------------------------- checkpoints


def test_field_state_records_its_backend_and_loads_a_tcnn_state():
    torch.manual_seed(2)
    field = build_field(FieldConfig(output="rgb", **FIELD))
    state = field.state_dict()
    assert state["encoding._extra_state"]["backend"] == "torch"
    table = TcnnTable(**GEOMETRY)
    params = torch.empty(table.n_params).uniform_(-0.5, 0.5)
    del state["encoding.planes"], state["encoding._extra_state"]
    state.update(tcnn_state(params, prefix="encoding."))  # the MLP keys are the same on both backends
    fresh = build_field(FieldConfig(output="rgb", **FIELD))
    fresh.load_state_dict(state)  # strict
    assert fresh.encoding.loaded_from == "tcnn"
    points = torch.rand(16, 3) * 2 - 1
    expected = fresh.trunk(table.encode(params, (points + 1) / 2).float())
    torch.testing.assert_close(fresh.feature_head(expected).sigmoid(), fresh(points).features, atol=1e-5, rtol=0)


def test_a_state_without_a_record_still_loads():
    """Checkpoints written before the record existed (torch backend) keep loading."""
    torch.manual_seed(3)
    a, b = build_field(FieldConfig(**FIELD)), build_field(FieldConfig(**FIELD))
    state = {k: v for k, v in a.state_dict().items() if k != "encoding._extra_state"}
    b.load_state_dict(state)
    assert torch.equal(a.encoding.planes, b.encoding.planes)


def test_a_different_grid_stops_with_one_line():
    state = build_field(FieldConfig(**FIELD)).state_dict()
    other = build_field(FieldConfig(**dict(FIELD, log2_hashmap_size=9)))
    with pytest.raises(InputError, match=r"hash grid \(4 levels x 2 features, table 2\^8.*not this field's") as err:
        other.load_state_dict(state)
    assert "\n" not in str(err.value)
    damaged = dict(tcnn_state(torch.zeros(100), prefix="encoding."))
    with pytest.raises(InputError, match="holds 100 values where its settings .* give 1520"):
        build_field(FieldConfig(**FIELD)).encoding.load_state_dict({k[len("encoding."):]: v for k, v in damaged.items()})


def test_optimizer_moments_follow_the_table_to_the_other_backend():
    """A tcnn run's Adamax moments (flat, tcnn layout) resume in the torch grid's layout."""
    torch.manual_seed(4)
    table = TcnnTable(**GEOMETRY)
    field = build_field(FieldConfig(**FIELD))
    optimizer = torch.optim.Adamax(field.parameters(), lr=0.01)
    field(torch.rand(64, 3) * 2 - 1).features.sum().backward()
    optimizer.step()
    saved = optimizer.state_dict()
    grid_id = [p is field.encoding.planes for p in field.parameters()].index(True)
    # Write the grid's moments as a tcnn run would hold them, row by row (torch rows: hashed levels first).
    planes_rows = {level: field.encoding.row_offset[level].item() for level in range(4)}
    tcnn_saved = {**saved, "state": {k: dict(v) for k, v in saved["state"].items()}}
    for name in ("exp_avg", "exp_inf"):
        moment = saved["state"][grid_id][name]
        flat = torch.zeros(table.n_params)
        for level, rows in enumerate(table.rows):
            for r in range(rows):
                for f in range(2):
                    flat[(table.offsets[level] + r) * 2 + f] = moment[f, planes_rows[level] + r]
        tcnn_saved["state"][grid_id][name] = flat
    ported = port_optimizer_state(tcnn_saved, optimizer, field)
    for name in ("exp_avg", "exp_inf"):
        torch.testing.assert_close(ported["state"][grid_id][name], saved["state"][grid_id][name], rtol=0, atol=0)
    optimizer.load_state_dict(ported)
    field(torch.rand(64, 3) * 2 - 1).features.sum().backward()
    optimizer.step()  # shapes agree: the step runs
    assert port_optimizer_state(saved, optimizer, field)["state"][grid_id]["exp_avg"] is saved["state"][grid_id]["exp_avg"]


def test_a_tcnn_run_exports_on_the_cpu(tmp_path):
    """A run directory whose checkpoint holds a tcnn table loads for export on this CPU machine."""
    from sjc3d.atomic import atomic_write_text
    from sjc3d.config import Config, dump_config
    from sjc3d.rundir import RunPaths, load_run, save_checkpoint

    torch.manual_seed(5)
    config = Config(field=FieldConfig(output="rgb", **FIELD))
    trained = build_field(config.field)
    with torch.no_grad():
        trained.encoding.planes.uniform_(-0.5, 0.5)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("encoding.")}
    state.update(tcnn_state(planes_to_tcnn(trained.encoding.planes, trained.encoding.specs), prefix="encoding."))
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    atomic_write_text(paths.config, dump_config(config))
    save_checkpoint(paths.last_checkpoint, {"step": 7, "field": state})
    run = load_run(paths.root)
    assert run.field.encoding.loaded_from == "tcnn" and run.step == 7
    points = torch.rand(32, 3) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(run.field(points).density, trained(points).density, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- against real tcnn


@pytest.mark.cuda
def test_tables_convert_exactly_against_real_tinycudann():
    from sjc3d.fields.tcnn_backend import TcnnHashGridEncoding, tcnn_available

    if not tcnn_available():
        pytest.skip("tinycudann is not installed")
    torch.manual_seed(6)
    for geometry in (GEOMETRY, dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
                                    per_level_scale=1.447269237440378)):
        tcnn_grid = TcnnHashGridEncoding(**geometry).cuda()
        with torch.no_grad():
            tcnn_grid.encoding.params.uniform_(-1, 1)
        torch_grid_ = HashGridEncoding(**geometry).cuda()
        assert torch_grid_.planes.numel() == tcnn_grid.encoding.params.numel()
        torch_grid_.load_state_dict(tcnn_grid.state_dict())
        x = torch.rand(8192, 3, device="cuda")
        x[0], x[1], x[2, 0] = 1.0, 0.0, 1.0
        with torch.no_grad():
            torch.testing.assert_close(torch_grid_(x), tcnn_grid(x), atol=1e-5, rtol=1e-5)
        back = TcnnHashGridEncoding(**geometry).cuda()
        back.load_state_dict(torch_grid_.state_dict())
        assert back.loaded_from == "torch"
        assert torch.equal(back.encoding.params, tcnn_grid.encoding.params)
    # and real tcnn agrees with the hand-written reading this file's CPU tests rely on
    small = TcnnHashGridEncoding(**GEOMETRY).cuda()
    points = torch.rand(20, 3)
    points[0] = 1.0
    with torch.no_grad():
        real = small(points.cuda()).double().cpu()
    torch.testing.assert_close(real, TcnnTable(**GEOMETRY).encode(small.encoding.params.detach().cpu(), points),
                               atol=1e-5, rtol=0)
