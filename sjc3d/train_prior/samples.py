"""Sample grids during training: what the model believes a held-out object looks like elsewhere.

Each row is one held-out object: its conditioning view, the true target view, and DDIM samples
of the model for the target's relative pose — drawn through `Zero123Prior` and
`sjc3d.views.sample_views`, the very code `sjc3d views` and the fit use, so a grid shows the
shipped model exactly as the engine will see it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sjc3d.train_prior.data import ViewSet
from sjc3d.train_prior.model import PriorComponents


def prior_from_components(parts: PriorComponents):
    """A `Zero123Prior` over in-memory components (no files)."""
    from sjc3d.priors.zero123 import Zero123Prior

    return Zero123Prior(parts.unet, parts.vae, parts.image_encoder, parts.projection, parts.scheduler_config)


@torch.no_grad()
def sample_grid(parts: PriorComponents, views: ViewSet, objects: Tensor, n_rows: int, steps: int, guidance: float,
                seed: int, n_samples: int = 2) -> Tensor:
    """[rows·S, (2 + n_samples)·S, 3] in [0, 1]: input | truth | samples, one held-out object a row.

    The conditioning view of object k is its first view, the target its second.
    """
    from sjc3d.cameras import zero123_pose
    from sjc3d.views import sample_views

    prior = prior_from_components(parts)
    rows = []
    for k in objects[:n_rows].tolist():
        cond, target = int(views.offsets[k]), int(views.offsets[k]) + 1
        image = views.images[cond].float() / 255.0
        prior.condition(image, 0.0, float(views.c2w[cond, :3, 3].norm()))
        pose = zero123_pose(views.c2w[cond], views.c2w[target]).expand(n_samples, 4)
        generator = torch.Generator().manual_seed(seed + k)
        samples = sample_views(prior, pose, steps, guidance, generator).cpu()
        truth = views.images[target].float() / 255.0
        rows.append(torch.cat([image, truth, *samples], dim=1))
    return torch.cat(rows, dim=0)
