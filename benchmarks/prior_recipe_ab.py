"""Diffusion-stage recipes of `sjc3d train-prior`, A against B, judged on held-out novel views.

    python benchmarks/prior_recipe_ab.py --steps 1500 \\
        --variant base diffusion.lr=0.0003 diffusion.autocast=float32 \\
        --variant min-snr-5 diffusion.lr=0.0003 diffusion.autocast=float32 diffusion.snr_gamma=5 \\
        --variant lr-1e-3 diffusion.lr=0.001 diffusion.autocast=float32 \\
        --variant bf16 diffusion.lr=0.0003 diffusion.autocast=bf16

Each variant trains the UNet stage of `configs/prior/toy.yaml` (plus its overrides, and
`diffusion.steps=--steps`) on the *shipped* model's frozen autoencoder (`autoencoder.init_from`,
`--autoencoder`), so the hour's first stage is not repeated and every variant sees the same
latents; same seed, so the same pairs,
timesteps and noise at every step.  The trained model is then scored as
`benchmarks/learned_prior.py --part views` scores the shipped one: DDIM samples of held-out
objects at 6 relative poses against the true views, mean PSNR (SSIM), plus the card's held-out
ε loss (EMA weights, unweighted) and the UNet stage's training rate (it/s over the run; time the
variants only on an otherwise idle machine).  Run it alone on the machine (each variant of 1,500 steps
takes ~10 min on 2 cores); runs are kept under --out, with each variant's scores (views.json), so a
re-run with more variants trains and scores only the new ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHIPPED = ROOT / "assets" / "zero123-toy"


def held_out_loss(card: Path) -> float:
    """The held-out ε loss the model card reports."""
    import re

    # "held-out ε loss (EMA, 16 objects) 0.0453" (cards before v-prediction: "held-out loss (EMA, …)")
    found = re.search(r"held-out (?:ε )?loss \(EMA[^)]*\) ([0-9.]+)", card.read_text())
    if found is None:
        raise ValueError(f"{card}: no held-out loss in the card")
    return float(found.group(1))


def training_rate(metrics: Path) -> float:
    """The diffusion stage's steps per second over the whole run (its last metrics record)."""
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return float([r for r in records if r["stage"] == "diffusion"][-1]["it_per_s"])


def scored_views(paths, objects, args) -> dict:
    """Mean PSNR / SSIM of the variant's novel views, and their PSNR against the input view (how much
    they copy it; the true views score copy-the-input's PSNR there), kept in its run folder
    (views.json) so that a table re-run with more variants scores each trained model once."""
    import learned_prior

    # The setting names the trained weights too, so a variant trained again is scored again.
    weights = paths.model / "unet" / "diffusion_pytorch_model.safetensors"
    setting = {"objects": args.objects, "guidance": args.guidance, "seeds": args.seeds,
               "unet_mtime_ns": weights.stat().st_mtime_ns}
    record = paths.root / "views.json"
    kept = json.loads(record.read_text()) if record.is_file() else None
    if kept is not None and kept["setting"] == setting and "psnr_to_input" in kept["scores"]:
        return kept["scores"]
    rows = learned_prior.views_part(str(paths.model), objects, [args.guidance], args.seeds, 50)
    mine = [r for r in rows if r["method"] != "copy-input"]
    scores = {"psnr": statistics.mean(r["psnr"] for r in mine), "ssim": statistics.mean(r["ssim"] for r in mine),
              "psnr_to_input": statistics.mean(r["psnr_to_input"] for r in mine),
              "truth_to_input": statistics.mean(r["psnr"] for r in rows if r["method"] == "copy-input")}
    record.write_text(json.dumps({"setting": setting, "scores": scores}))
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]")
    parser.add_argument("--steps", type=int, default=1500, help="UNet steps of every variant")
    parser.add_argument("--autoencoder", default=str(SHIPPED), help="the trained autoencoder every variant uses")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--guidance", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "prior-recipe")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import learned_prior

    from sjc3d.train_prior.command import train_prior
    from sjc3d.train_prior.config import load_training_config
    from sjc3d.train_prior.loop import PriorRunPaths

    objects = learned_prior.held_out_objects(args.objects)
    results = []
    for name, *overrides in args.variant:
        cfg = load_training_config(str(ROOT / "configs" / "prior" / "toy.yaml"),
                                   [f"autoencoder.init_from={args.autoencoder}", *overrides,
                                    f"diffusion.steps={args.steps}", "run.sample_every=0"])
        paths = PriorRunPaths(args.out / name)
        if not (paths.model / "MODEL.md").is_file():
            train_prior(cfg, paths, progress=False)
        scores = scored_views(paths, objects, args)
        results.append({"variant": name, "overrides": overrides, **scores,
                        "held_out_loss": held_out_loss(paths.model / "MODEL.md"),
                        "it_per_s": training_rate(paths.metrics)})
        print(json.dumps(results[-1]), flush=True)
    print(f"\n{args.steps} UNet steps from the shipped autoencoder; novel views at guidance {args.guidance:g}, "
          f"{args.objects} held-out objects × 6 poses × {args.seeds} seeds")
    # "to input": PSNR of the views against the input view; the true views score `truth_to_input` there,
    # and a model that ignores the pose far above it (learned_prior.print_copying).
    print(f"{'variant':<16}{'PSNR':>8}{'SSIM':>8}{'to input':>10}{'held-out loss':>15}{'it/s':>8}")
    for r in results:
        print(f"{r['variant']:<16}{r['psnr']:8.2f}{r['ssim']:8.3f}{r['psnr_to_input']:10.2f}{r['held_out_loss']:15.4f}"
              f"{r['it_per_s']:8.2f}")
    if results:
        print(f"(the true views against the input: {results[0]['truth_to_input']:.2f} dB)")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
