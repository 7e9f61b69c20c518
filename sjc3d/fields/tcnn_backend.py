"""tiny-cuda-nn hash-grid encoding (CUDA only) — the one module of sjc3d that imports tinycudann.

Same hyper-parameters and level geometry as `HashGridEncoding` (tcnn defines them), so the two
backends are interchangeable behind `build_field`; their parameters are laid out differently,
so a checkpoint is tied to the backend that wrote it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def tcnn_available() -> bool:
    """True when CUDA is up and `import tinycudann` works."""
    if not torch.cuda.is_available():
        return False
    try:
        import tinycudann  # noqa: F401
    except Exception:  # ImportError, or a CUDA/driver mismatch raised at import
        return False
    return True


class TcnnHashGridEncoding(nn.Module):
    """x [N, 3] in [0, 1]³ → [N, n_levels · n_features_per_level] float32, on CUDA."""

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

        self.n_output_dims = n_levels * n_features_per_level
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "HashGrid",
                "n_levels": n_levels,
                "n_features_per_level": n_features_per_level,
                "log2_hashmap_size": log2_hashmap_size,
                "base_resolution": base_resolution,
                "per_level_scale": per_level_scale,
                "interpolation": "Linear",
            },
            dtype=torch.float32,  # the SJC gradients are small; keep the table in fp32
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.encoding(x.clamp(0.0, 1.0).contiguous()).float()
