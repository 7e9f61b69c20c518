"""Checkpoints that travel between the two hash-grid backends (tinycudann ⇄ pure torch).

Both backends hold the same numbers — one value per (level, row, feature), with the same level
geometry, dense indexing and hash (sjc3d/fields/hashgrid.py) — laid out differently:

    tcnn   `encoding.params` [n_rows · F]: levels in order 0, 1, …, L−1, level l starting at
           row o_l = Σ_{m<l} n_rows_m, features interleaved: value (l, r, f) at (o_l + r)·F + f.
           (tiny-cuda-nn include/tiny-cuda-nn/encodings/grid.h: GridEncodingTemplated fills
           `m_offset_table` level by level with params_in_level = min(next_multiple(R³, 8),
           2^log2_hashmap_size); kernel_grid reads `grid += offset_table.data[level] *
           N_FEATURES_PER_LEVEL` and `grid[grid_index(...) * N_FEATURES_PER_LEVEL + f]`.)
    torch  `planes` [F, n_rows]: feature-major, hashed levels first, then dense ones
           (`hashgrid.row_offsets`).

Each level owns the same number of rows in both, so a conversion is a permutation of row blocks
and a transpose.  The MLP heads are torch `nn.Linear` layers on both backends (only the
encoding is tcnn's), so nothing else in a field's state changes.

The backend that wrote a state is recorded in it: each encoding's `get_extra_state` returns a
`grid_record` (backend and geometry), stored under `encoding._extra_state`.  Loading converts
a state from the other backend in place (`adopt_grid_state`); a geometry that differs from the
field's stops with one line (InputError).  The optimiser's moments of the table have the
table's layout too: `port_optimizer_state` converts them for a resume on the other backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sjc3d.errors import InputError
from sjc3d.fields.hashgrid import LevelSpec, row_offsets

# Where each backend keeps its table, relative to the encoding module's prefix.
TABLE_KEYS = {"torch": "planes", "tcnn": "encoding.params"}


def torch_rows_of_tcnn_rows(specs: list[LevelSpec]) -> Tensor:
    """[n_rows] int64: the torch-table row that holds each tcnn-table row (a permutation).

    tcnn stores the levels one after the other in level order, so its rows are the levels'
    row ranges concatenated in that order; each range sits at the level's torch offset.
    """
    return torch.cat([torch.arange(spec.n_rows) + offset for spec, offset in zip(specs, row_offsets(specs))])


def tcnn_to_planes(params: Tensor, specs: list[LevelSpec], n_features: int) -> Tensor:
    """tcnn's flat table [n_rows · F] → the torch backend's planes [F, n_rows] (same dtype)."""
    rows = params.detach().reshape(-1, n_features)  # [n_rows, F], tcnn row order
    planes = rows.new_empty(n_features, rows.shape[0])
    planes[:, torch_rows_of_tcnn_rows(specs).to(rows.device)] = rows.t()
    return planes


def planes_to_tcnn(planes: Tensor, specs: list[LevelSpec]) -> Tensor:
    """The torch backend's planes [F, n_rows] → tcnn's flat table [n_rows · F]."""
    rows = planes.detach()[:, torch_rows_of_tcnn_rows(specs).to(planes.device)]  # [F, n_rows], tcnn order
    return rows.t().contiguous().reshape(-1)


def grid_record(backend: str, specs: list[LevelSpec], n_features: int, log2_hashmap_size: int) -> dict:
    """What a checkpoint records about its table: the backend that wrote it and the geometry."""
    return {
        "backend": backend,
        "n_levels": len(specs),
        "n_features_per_level": n_features,
        "log2_hashmap_size": log2_hashmap_size,
        "resolutions": [s.resolution for s in specs],
    }


def _describe(record: dict) -> str:
    resolutions = record["resolutions"]
    return (f"{record['n_levels']} levels x {record['n_features_per_level']} features, table "
            f"2^{record['log2_hashmap_size']}, resolutions {resolutions[0]}..{resolutions[-1]}")


def convert_table(table: Tensor, source: str, target: str, specs: list[LevelSpec], n_features: int) -> Tensor:
    """A table — or any tensor of its shape, e.g. optimiser moments — from `source`'s layout to `target`'s."""
    if source == target:
        return table
    if target == "torch":
        return tcnn_to_planes(table, specs, n_features)
    return planes_to_tcnn(table.reshape(n_features, -1), specs)


def adopt_grid_state(state_dict: dict, prefix: str, encoding) -> str | None:
    """Rewrite the table in `state_dict` (keys under `prefix`) into `encoding`'s layout, in place.

    encoding: the loading module (`backend`, `specs`, `n_features_per_level`, `grid_record()`).
    Returns the backend that wrote the state, or None when the state holds no table (torch's
    loader then reports the missing key).  A state written before records existed gets one
    inferred from its keys.  Raises InputError (one line) when the geometries differ.
    """
    found = [backend for backend, key in TABLE_KEYS.items() if prefix + key in state_dict]
    if not found:
        return None
    source = found[0]
    own = encoding.grid_record()
    record_key = prefix + "_extra_state"
    record = state_dict.get(record_key) or dict(own, backend=source)
    if {k: v for k, v in record.items() if k != "backend"} != {k: v for k, v in own.items() if k != "backend"}:
        raise InputError(f"the checkpoint's hash grid ({_describe(record)}) is not this field's ({_describe(own)}): "
                         "the field settings differ from the ones the run was trained with")
    table = state_dict.pop(prefix + TABLE_KEYS[source])
    expected = encoding.n_features_per_level * sum(s.n_rows for s in encoding.specs)
    if table.numel() != expected:
        raise InputError(f"the checkpoint's hash grid holds {table.numel()} values where its settings "
                         f"({_describe(own)}) give {expected}: the checkpoint is damaged")
    state_dict[prefix + TABLE_KEYS[encoding.backend]] = convert_table(
        table, source, encoding.backend, encoding.specs, encoding.n_features_per_level)
    state_dict[record_key] = record
    return source


def port_optimizer_state(state: dict, optimizer: torch.optim.Optimizer, field: torch.nn.Module) -> dict:
    """An optimiser state dict with the hash grid's moments in `field`'s layout.

    state: what `optimizer.state_dict()` returned where the checkpoint was written (the same
    parameter order: the optimiser is built the same way from the same config).  Entries of the
    grid's parameter that have the other backend's table shape are converted; a state that
    already matches comes back unchanged.  Call it before `optimizer.load_state_dict(...)`.
    """
    encoding = field.encoding
    grid = encoding.grid_parameter
    live = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in state.get("param_groups", []) for i in group["params"]]
    if len(live) != len(saved):
        return state  # not this optimiser's state: load_state_dict says so itself
    source = "tcnn" if encoding.backend == "torch" else "torch"
    entries = dict(state.get("state", {}))
    for param_id, param in zip(saved, live):
        if param is not grid or param_id not in entries:
            continue
        entry = dict(entries[param_id])
        for name, value in entry.items():
            if isinstance(value, Tensor) and value.shape != grid.shape and value.numel() == grid.numel():
                entry[name] = convert_table(value, source, encoding.backend, encoding.specs, encoding.n_features_per_level)
        entries[param_id] = entry
    return dict(state, state=entries)
