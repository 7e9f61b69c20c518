"""Fit each mesh from its front view with the oracle prior, export, and score the geometry.

    python benchmarks/oracle_reconstruction.py ../shared/data/meshes/spot.obj ... [--steps N] [key=value ...]
    python benchmarks/oracle_reconstruction.py MESH ... --variant today loss.near_view_mode=input \
        --variant reference    # an A/B: every mesh with each variant's overrides, one table


The input view is the mesh file's +z side (glTF's "front"); spot's head looks toward −z, so its
input view shows the cow from behind.  Per mesh it prints Chamfer distance and volume IoU (64³) against the truth after normalising
both to unit size (sjc3d.metrics.evaluate_meshes), the chosen iso level and the wall time of
fit + export.  Target on a 2-core CPU with the `oracle-cpu` preset: IoU ≥ 0.8 and Chamfer ≤ 0.02
for spot, blub and fuze in ≤ 5 min each.  With `--variant NAME [key=value ...]` (repeatable) each
mesh is fitted once per variant (its overrides on top of the common ones), and a summary gives
each variant's mean over the meshes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from sjc3d.config import load_config
from sjc3d.export import export_field
from sjc3d.metrics import evaluate_meshes
from sjc3d.priors.oracle import load_world_mesh
from sjc3d.rundir import load_run
from sjc3d.trainer import fit

# Up axis of the files in ../shared/data/meshes: fuze (trimesh's model) is z-up, the rest y-up.
UP_AXIS = {"fuze": "z"}


def reconstruct(mesh_path: Path, preset: str, overrides: list[str], out: Path) -> dict:
    up = UP_AXIS.get(mesh_path.stem, "y")
    config = load_config([preset], [f"prior.source=oracle:{mesh_path}", f"prior.oracle_up={up}", *overrides])
    start = time.perf_counter()
    result = fit(config, None, out / mesh_path.stem, progress=False)
    fit_time = time.perf_counter() - start
    run = load_run(out / mesh_path.stem)
    with torch.no_grad():
        exported = export_field(run.field, config.export)
    total = time.perf_counter() - start
    truth = load_world_mesh(mesh_path, y_up=up == "y")
    metrics = evaluate_meshes(exported.mesh, truth)
    exported.mesh.export(out / f"{mesh_path.stem}.ply")
    return {
        "mesh": mesh_path.stem,
        "iou": metrics.iou,
        "chamfer": metrics.chamfer,
        "f_score": metrics.f_score,
        "threshold": exported.threshold.level,
        "faces": len(exported.mesh.faces),
        "ref_psnr": result.metrics.get("ref_psnr", float("nan")),
        "fit_s": fit_time,
        "total_s": total,
    }


def print_row(row: dict) -> None:
    print(f"{row['variant']:<14} {row['mesh']:<8} {row['iou']:6.3f} {row['chamfer']:8.4f} {row['f_score']:7.3f} "
          f"{row['threshold']:8.3g} {row['faces']:7d} {row['ref_psnr']:8.2f} {row['fit_s']:7.1f} {row['total_s']:8.1f}",
          flush=True)


def print_summary(rows: list[dict], variants: list[str]) -> None:
    print(f"\n{'variant':<14} {'mean IoU':>8} {'min IoU':>8} {'Chamfer':>8} {'F@0.02':>7} {'fit s':>7}")
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        mean = {k: sum(r[k] for r in mine) / len(mine) for k in ("iou", "chamfer", "f_score", "fit_s")}
        print(f"{name:<14} {mean['iou']:8.3f} {min(r['iou'] for r in mine):8.3f} {mean['chamfer']:8.4f} "
              f"{mean['f_score']:7.3f} {mean['fit_s']:7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", help="mesh files, and key=value config overrides")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--preset", default="oracle-cpu")
    parser.add_argument("--out", type=Path, default=None, help="keep runs and meshes here")
    parser.add_argument("--variant", nargs="+", action="append", default=None, metavar="NAME [KEY=VALUE]",
                        help="a named set of overrides; repeat for an A/B table")
    args = parser.parse_intermixed_args()  # meshes and common overrides first, then the variants
    meshes = [Path(item) for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item] + ([f"train.steps={args.steps}"] if args.steps else [])
    variants = {v[0]: v[1:] for v in args.variant} if args.variant else {"-": []}
    torch.set_num_threads(2)
    out = args.out or Path(tempfile.mkdtemp(prefix="sjc3d-oracle-"))
    rows = []
    print(f"{'variant':<14} {'mesh':<8} {'IoU':>6} {'Chamfer':>8} {'F@0.02':>7} {'iso':>8} {'faces':>7} {'refPSNR':>8} "
          f"{'fit s':>7} {'total s':>8}")
    for name, extra in variants.items():
        for mesh_path in meshes:
            where = out / name if len(variants) > 1 else out
            row = {"variant": name, **reconstruct(mesh_path, args.preset, overrides + extra, where)}
            rows.append(row)
            print_row(row)
    if len(variants) > 1:
        print_summary(rows, list(variants))
    met = all(r["iou"] >= 0.8 and r["chamfer"] <= 0.02 and r["total_s"] <= 300 for r in rows)
    print(f"target (IoU >= 0.8, Chamfer <= 0.02, <= 300 s each): {'met' if met else 'NOT met'}")
    print(json.dumps(rows))
    print(f"runs and meshes in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
