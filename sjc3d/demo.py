"""`make demo`: one photo in, a coloured mesh out — the real pipeline, offline, on a CPU.

It fits `assets/example.png` (an object made by the project, held out from the prior's training
data: assets/make_example.py) with the learned prior the project ships (`assets/zero123-toy`,
trained by `sjc3d train-prior toy`, see its MODEL.md): SJC in latent mode through the prior's
own VAE, exactly as with the real Zero-1-to-3.  Then it exports a coloured mesh, renders a
turntable, samples a few novel views from the prior alone, and — since the example's true shape
is known — scores the mesh against it.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path

from sjc3d.config import CONFIGS_DIR, SHIPPED_MODEL

ROOT = CONFIGS_DIR.parent
EXAMPLE = ROOT / "assets" / "example.png"
MODEL = ROOT / SHIPPED_MODEL
PRESET = "learned-cpu"

BANNER = """\
sjc3d demo: photo -> 3D with a learned view-conditioned prior, offline on the CPU.
Input:  assets/example.png (made by the project; an object the prior never saw in training)
Prior:  assets/zero123-toy, a small Zero-1-to-3-style model trained by `sjc3d train-prior toy`
        on procedural shapes (see its MODEL.md) - not the real Zero-1-to-3, which needs a GPU.
"""

REAL_WEIGHTS = """\
With the real Zero-1-to-3 weights (a CUDA GPU is strongly advised):
  huggingface-cli download ashawkey/zero123-xl-diffusers     # on a machine with internet
  sjc3d fit ../shared/data/images/hamburger_rgba.png -c reference
  sjc3d fit photo.png -c reference --model /path/to/zero123-folder-or.ckpt
"""


def main() -> int:
    import torch

    from sjc3d.config import load_config
    from sjc3d.errors import UserError
    from sjc3d.export import export_command
    from sjc3d.trainer import fit
    from sjc3d.turntable import render_command
    from sjc3d.views import views_command

    print(BANNER)
    if not (MODEL / "model_index.json").is_file():
        print(f"error: the shipped prior {MODEL} is missing; rebuild it with `make prior`", file=sys.stderr)
        return 3
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    start = time.perf_counter()
    config = load_config([PRESET], [f"prior.source={MODEL}"])
    run_dir = Path("outputs") / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S")
    result = fit(config, EXAMPLE, run_dir)
    print(f"fit: {result.step} steps in {result.wall_time:.0f} s ({1000 * result.wall_time / result.step:.0f} ms/step)")

    mesh_path = run_dir / "mesh.glb"
    export_command(run_dir=run_dir, mesh=mesh_path)
    written = render_command(run_dir=run_dir, video=run_dir / "turntable.mp4", grid=run_dir / "views.png", frames=60,
                             elevation=15.0, resolution=128)
    views = views_command(image=EXAMPLE, azimuth="90,180,270", elevation_delta=0.0, radius_delta=0.0,
                          input_elevation=config.input.elevation, model=str(MODEL), steps=50, guidance=3.0, seed=0,
                          out=run_dir / "novel-views", device="cpu",
                          object_fraction=config.input.object_fraction)

    try:
        print(score_against_truth(mesh_path))
    except UserError as e:
        print(f"(no score: {e})")

    print(f"\ndone in {time.perf_counter() - start:.0f} s; where things are:")
    print(f"  run directory  {run_dir}")
    print(f"  mesh           {mesh_path}")
    print(f"  previews       {run_dir / 'previews'}")
    for path in written:
        print(f"  turntable/grid {path}")
    print(f"  prior's views  {views[-1]}")
    print()
    print(REAL_WEIGHTS)
    return 0


def score_against_truth(mesh_path: Path) -> str:
    """The example's true shape is known (assets/example.json): volume IoU, Chamfer, F-score."""
    from sjc3d.datasets.shapes import ProceduralObject
    from sjc3d.export.writers import FILE_TO_WORLD
    from sjc3d.metrics import evaluate_meshes, load_mesh

    truth = ProceduralObject.from_dict(json.loads((ROOT / "assets" / "example.json").read_text())["object"]).mesh()
    mesh = load_mesh(mesh_path)
    mesh.apply_transform(FILE_TO_WORLD)  # files are y-up, front +z; the world is z-up (export/writers.py)
    scores = evaluate_meshes(mesh, truth)
    return f"mesh vs truth: volume IoU {scores.iou:.3f}, Chamfer {scores.chamfer:.4f}, F-score {scores.f_score:.3f}"


if __name__ == "__main__":
    sys.exit(main())
