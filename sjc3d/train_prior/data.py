"""The paired views a prior trains on, held in memory.

Every view of every object is loaded once, at the model's image size, into one uint8 tensor;
the trainer then draws (conditioning, target) pairs of views of the same object by index.
Objects may have different numbers of views (real renders sometimes miss some): object k owns
the views `offsets[k] : offsets[k + 1]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class ViewSet:
    """All views of a dataset.

    images:  [N, S, S, 3] uint8, composited on white.
    c2w:     [N, 4, 4] float32 camera-to-world (sjc3d convention, DESIGN.md §3).
    offsets: [n_objects + 1] long, view ranges of the objects.
    names:   object folder names, [n_objects].
    """

    images: Tensor
    c2w: Tensor
    offsets: Tensor
    names: list[str]

    @property
    def n_objects(self) -> int:
        return len(self.names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def model_input(self, index: Tensor) -> Tensor:
        """Views `index` [B] as the networks take them: [B, 3, S, S] float in [−1, 1]."""
        return self.images[index].permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def views_of(self, objects: Tensor) -> Tensor:
        """Indices of every view of `objects` [m] (long)."""
        return torch.cat([torch.arange(int(self.offsets[k]), int(self.offsets[k + 1])) for k in objects.tolist()])


def split_objects(n_objects: int, n_held_out: int, seed: int) -> tuple[Tensor, Tensor]:
    """(training objects, held-out objects): a seeded permutation, the held-out ones never trained on."""
    order = torch.randperm(n_objects, generator=torch.Generator().manual_seed(seed))
    return order[n_held_out:].sort().values, order[:n_held_out].sort().values


def load_view_set(root: Path, size: int, progress: bool = False) -> ViewSet:
    """Read a folder in the Zero-1-to-3 layout (sjc3d/datasets/zero123_layout.py) at `size`².

    Bad folders raise one-line InputErrors naming the file (missing .npy, wrong shape, unreadable PNG).
    """
    from sjc3d.datasets.zero123_layout import load_dataset

    data = load_dataset(root, size, progress)
    return ViewSet(data.images, data.c2w, data.offsets, list(data.names))
