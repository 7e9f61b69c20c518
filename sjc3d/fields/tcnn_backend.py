"""tiny-cuda-nn hash-grid encoding (CUDA only) — the one module of sjc3d that imports tinycudann.

Same hyper-parameters, level geometry, dense indexing and hash as `HashGridEncoding` (tcnn
defines them), so the two backends are interchangeable behind `build_field`.  Their tables are
laid out differently; a checkpoint records the backend that wrote it and loads on either
(sjc3d/fields/portable.py), so a run trained here exports and resumes on a CPU machine.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sjc3d.fields.hashgrid import level_specs


def tcnn_available() -> bool:
    """True when CUDA is up and `import tinycudann` works."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a CUDA/driver mismatch raised at import
        return False
    return True


def tcnn_encoding_config(n_levels: int, n_features_per_level: int, log2_hashmap_size: int, base_resolution: int,
                         per_level_scale: float) -> dict:
    """tcnn's HashGrid config for sjc3d's grid (linear interpolation, tcnn's default hash)."""
    return {
        "otype": "HashGrid",
        "n_levels": n_levels,
        "n_features_per_level": n_features_per_level,
        "log2_hashmap_size": log2_hashmap_size,
        "base_resolution": base_resolution,
        "per_level_scale": per_level_scale,
        "interpolation": "Linear",
    }


class TcnnHashGridEncoding(nn.Module):
    """x [N, 3] in [0, 1]³ → [N, n_levels · n_features_per_level] float32, on CUDA."""

    backend = "tcnn"

    def __init__(
        self,
        n_levels: int,
        n_features_per_level: int,
        log2_hashmap_size: int,
        base_resolution: int,
        per_level_scale: float,
    ):
        super().__init__()
        import tinycudann as tcnn

        self.n_levels = n_levels
        self.n_features_per_level = n_features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.specs = level_specs(n_levels, base_resolution, per_level_scale, log2_hashmap_size)
        self.n_output_dims = n_levels * n_features_per_level
        config = tcnn_encoding_config(n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale)
        # fp32 table: the SJC gradients are small; keep the table in fp32
        self.encoding = tcnn.Encoding(n_input_dims=3, encoding_config=config, dtype=torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        return self.encoding(x.clamp(0.0, 1.0).contiguous()).float()

    # ----------------------------------------------------------------- checkpoints (portable.py)

    @property
    def grid_parameter(self) -> nn.Parameter:
        return self.encoding.params

    def grid_record(self) -> dict:
        from sjc3d.fields.portable import grid_record

        return grid_record(self.backend, self.specs, self.n_features_per_level, self.log2_hashmap_size)

    def get_extra_state(self) -> dict:
        """Saved with the table: the backend that wrote it and its geometry."""
        return self.grid_record()

    def set_extra_state(self, state: dict) -> None:
        self.loaded_from = state.get("backend", self.backend)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        from sjc3d.fields.portable import adopt_grid_state

        adopt_grid_state(state_dict, prefix, self)  # torch planes become tcnn's flat table
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
