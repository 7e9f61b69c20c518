"""The whole engine against the truth: a short oracle fit must carve the initial blob into the object.

Cameras, rendering, the Zero-1-to-3 relative pose, PAAS and the chained gradient all have to be
right for the volume IoU to rise: the oracle renders the true object at the pose it is *told*
(sjc3d.priors.oracle), so a pose computed the wrong way round or a chained score of the wrong
sign teaches the field another shape.  The input camera is raised to 30° so that a reversed
pose (Δpolar and Δazimuth negated) sends most views to the wrong elevation — at 0° the toy's
symmetries would hide it.  Measured (150 steps, 2 views per step, 2 CPU threads; the blob starts
at IoU 0.43): correct 0.86; `zero123_pose(c2w, input_c2w)` in step.py 0.69;
`sjc.chain_loss` negated 0.06.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sjc3d.config import load_config
from sjc3d.export import export_field
from sjc3d.metrics import volume_iou
from sjc3d.priors.oracle import load_world_mesh
from sjc3d.step import build_stage, read_stats, train_step

REPO = Path(__file__).resolve().parent.parent
STEPS = 150


def world_iou(field, config, truth) -> float:
    """Volume IoU (64³) of the exported mesh against the truth, both in the world frame (no rescaling)."""
    with torch.no_grad():
        mesh = export_field(field, config.export).mesh
    return volume_iou(mesh, truth, resolution=64)


def test_oracle_fit_carves_the_blob_into_the_object():
    config = load_config(["cpu-tiny"], [f"train.steps={STEPS}", "sjc.n_views=2", "input.elevation=30",
                                        "loss.near_view=0", "loss.depth_smooth=0", "export.resolution=64",
                                        "export.min_component_fraction=0"])
    truth = load_world_mesh(REPO / "assets" / "toy.obj")
    stage = build_stage(config, None)
    start = world_iou(stage.field, config, truth)
    for step in range(1, STEPS + 1):
        stats = train_step(stage, step)
    read_stats(stage, stats)  # raises if any step was not finite
    end = world_iou(stage.field, config, truth)
    assert start < 0.5  # the blob is a ball, not the snowman
    assert end > 0.8 and end > start + 0.35, (start, end)
