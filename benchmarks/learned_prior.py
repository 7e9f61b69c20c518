"""The shipped learned prior on held-out procedural objects: novel views, and 3D against score-off.

    python benchmarks/learned_prior.py                                  # both parts, 8 objects
    python benchmarks/learned_prior.py --part views --guidance 1 3 10   # novel views only
    python benchmarks/learned_prior.py --part identity --guidance 1 10  # diagnostic: asked for the input's pose
    python benchmarks/learned_prior.py --part 3d --variant g3 prior.guidance_scale=3 \\
        --variant g100 prior.guidance_scale=100                         # an A/B: one table

The objects are the `test` split of `sjc3d make-views` (seed 0): a split the training data
(`train`) never draws from, so the model has seen none of them.  Each object's input view is
its true render at the fit's input camera (elevation 0°, azimuth 0°, radius 2).

Novel views.  The model is conditioned on the true input view (the render itself, at the
model's image size, as the training views were framed) and sampled with DDIM at 6 relative
poses; PSNR and SSIM against the true views, each averaged over objects, poses and seeds, and
the squared error split into the true object's pixels and the background's, pooled, and the
SSIM split into the windows that see only the true background and those that see the object.
Baseline: "copy the input", the input view returned unchanged for every pose.  And each method's
PSNR against the input view itself, per pose: the true views are as far from the input as the copy
row's PSNR; a prior that ignores the pose returns its input and lands far above that (a blurred copy
can beat "copy the input" on PSNR and SSIM, so both tables are needed; README, "copying").  And the
silhouette IoU against the true view, per pose: the outline alone, blind to colour and shading.  The
copy row says how much the outline moves; a prior that draws it where the camera sees it scores above.
`--sample-mean` also scores the per-pixel mean of each view's `--seeds` samples: a diagnostic,
not a sample.  A sample of even a perfect model errs by twice its distribution's variance, the
distribution's mean by once, so the mean row says how much of a sample's error is the model's
uncertainty and how much is a distribution centred in the wrong place.

3D.  `fit` + export with the preset (default `learned-cpu`) for each variant — by default the
prior against the same fit with the score switched off (`sjc.weight=0`: reference-view losses
only) — and volume IoU (64³), Chamfer and F-score against the object's true surface, both meshes
normalised to unit size (sjc3d.metrics.evaluate_meshes), per object and mean; plus the fit's
time per step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sjc3d.cameras import input_c2w, spherical_to_c2w, zero123_pose  # noqa: E402
from sjc3d.config import load_config  # noqa: E402
from sjc3d.datasets.make_views import ViewsSpec, procedural_object  # noqa: E402
from sjc3d.datasets.raytrace import composite_on_white, render_views  # noqa: E402
from sjc3d.metrics import evaluate_meshes, psnr, ssim_map, ssim_radius  # noqa: E402

DEFAULT_MODEL = "assets/zero123-toy"
INPUT_ELEVATION, INPUT_RADIUS = 0.0, 2.0
# (Δazimuth°, Δelevation°) of the target views: around the object, and from above.
TARGETS = [(45.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0), (0.0, 30.0), (135.0, 30.0)]
FIT_INPUT_SIZE = 256


def held_out_objects(n: int, seed: int = 0):
    spec = ViewsSpec(seed=seed, split="test")
    return [procedural_object(spec, k) for k in range(n)]


def load_prior(model: str):
    """The model to score: a folder relative to the repository or the working directory, or a hub id."""
    from sjc3d.priors.zero123 import load_zero123

    return load_zero123(str(ROOT / model) if not Path(model).exists() else model, device="cpu")


def true_view(obj, elevation: float, azimuth: float, radius: float, size: int) -> torch.Tensor:
    """RGBA [size, size, 4] of the object seen from a spherical camera (the training renderer)."""
    c2w = spherical_to_c2w(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([radius]))
    return render_views(obj, c2w, size)[0]


# ----------------------------------------------------------------------------- novel views


def error_split(image: torch.Tensor, truth: torch.Tensor, on_object: torch.Tensor) -> dict:
    """The image's squared error [H, W, 3] vs [H, W, 3], per pixel of the whole view, split into the
    true object's pixels (`on_object` [H, W] bool) and the background's: the two sum to the MSE."""
    error = (image - truth).square().mean(-1)
    return {"se_object": float(error[on_object].sum() / error.numel()),
            "se_background": float(error[~on_object].sum() / error.numel())}


def silhouette(image: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """[H, W] bool: the pixels of a view on white [H, W, 3] that are not background (some channel
    darker than white by more than `threshold`, so faint haze from the decoder does not count)."""
    return (1 - image).amax(-1) > threshold


def silhouette_iou(image: torch.Tensor, truth: torch.Tensor) -> float:
    """Intersection over union of two views' silhouettes ([H, W, 3] each on white): the shape and
    place of the object, blind to its colours and shading (NaN if both are empty)."""
    a, b = silhouette(image), silhouette(truth)
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else math.nan


def ssim_split(image: torch.Tensor, truth: torch.Tensor, touched: torch.Tensor) -> dict:
    """The image's SSIM against the truth ([H, W, 3] each) and its split by window: "ssim" the mean
    over all windows, "ssim_background" over the windows that see only background (no pixel of
    `touched` [H, W] bool, the truth's non-zero alpha, in their 11 × 11 footprint: flat white in
    the truth; NaN if none), "ssim_object" over the rest.  Why split: speckle on a flat background
    costs SSIM out of proportion to its squared error, a wrong shape costs it near the object."""
    from scipy.ndimage import binary_dilation

    r = ssim_radius()
    index = ssim_map(image, truth)
    near = binary_dilation(touched.numpy(), structure=np.ones((2 * r + 1, 2 * r + 1), bool))[r:-r, r:-r]
    return {"ssim": float(index.mean()), "ssim_background": float(index[~near].mean()) if (~near).any() else math.nan,
            "ssim_object": float(index[near].mean()) if near.any() else math.nan}


def views_part(model: str, objects, guidances: list[float], seeds: int, steps: int, eta: float = 0.0,
               guidance_rescale: float = 0.0, guidance_min_t: int = 0, sample_mean: bool = False) -> list[dict]:
    """Score rows, one per (object, pose, method, seed); `sample_mean` adds, per guidance, the per-pixel
    mean of the seeds' samples of each view (method "prior gG avgN"): not a sample but an estimate of
    the mean of the model's distribution, the view a PSNR-optimal predictor would return (module doc)."""
    from sjc3d.views import sample_views

    prior = load_prior(model)
    size = prior.image_size
    source = input_c2w(INPUT_ELEVATION, INPUT_RADIUS)
    targets = spherical_to_c2w(torch.tensor([INPUT_ELEVATION + e for _, e in TARGETS]),
                               torch.tensor([a for a, _ in TARGETS]), torch.full((len(TARGETS),), INPUT_RADIUS))
    poses = zero123_pose(source, targets)
    rows = []
    for k, obj in enumerate(objects):
        image = composite_on_white(true_view(obj, INPUT_ELEVATION, 0.0, INPUT_RADIUS, size))
        truth_rgba = render_views(obj, targets, size)
        truth, on_object = composite_on_white(truth_rgba), truth_rgba[..., 3] > 0.5
        touched = truth_rgba[..., 3] > 0
        prior.condition(image, INPUT_ELEVATION, INPUT_RADIUS)

        def scores(view: torch.Tensor, j: int) -> dict:
            return {"psnr": psnr(view, truth[j]), **ssim_split(view, truth[j], touched[j]),
                    **error_split(view, truth[j], on_object[j]), "psnr_to_input": psnr(view, image),
                    "silhouette_iou": silhouette_iou(view, truth[j])}

        for j in range(len(TARGETS)):
            rows.append({"object": k, "pose": j, "method": "copy-input", **scores(image, j)})
        for guidance in guidances:
            drawn = []
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(1000 * k + seed)
                samples = sample_views(prior, poses, steps, guidance, generator, eta=eta,
                                       guidance_rescale=guidance_rescale, guidance_min_t=guidance_min_t).cpu()
                drawn.append(samples)
                for j in range(len(TARGETS)):
                    rows.append({"object": k, "pose": j, "method": f"prior g{guidance:g}", "seed": seed,
                                 **scores(samples[j], j)})
            if sample_mean:
                mean = torch.stack(drawn).mean(0)
                for j in range(len(TARGETS)):
                    rows.append({"object": k, "pose": j, "method": f"prior g{guidance:g} avg{seeds}", **scores(mean[j], j)})
        print(f"views: object {k} done", flush=True)
    return rows


def print_views(rows: list[dict]) -> None:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    header = "".join(f"  {f'Δaz {a:g} Δel {e:g}':>15}" for a, e in TARGETS)
    print(f"\nnovel views, PSNR dB (SSIM) per pose, mean over objects and seeds\n{'method':<14}{header}  {'mean':>13}")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for j in range(len(TARGETS)):
            at = [r for r in mine if r["pose"] == j]
            cells.append(f"  {statistics.mean(r['psnr'] for r in at):6.2f} ({statistics.mean(r['ssim'] for r in at):.3f})")
        mean = f"{statistics.mean(r['psnr'] for r in mine):6.2f} ({statistics.mean(r['ssim'] for r in mine):.3f})"
        print(f"{method:<14}{''.join(cells)}  {mean:>13}")
    print("\nsquared error per pixel, pooled over every view: on the true object + on the background (pooled PSNR)")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        on_object = statistics.mean(r["se_object"] for r in mine)
        background = statistics.mean(r["se_background"] for r in mine)
        print(f"{method:<14}{on_object:8.4f} + {background:.4f}   ({-10 * math.log10(on_object + background):.2f} dB; "
              f"true background pasted in: {-10 * math.log10(on_object):.2f} dB)")
    print_copying(rows)
    print_silhouettes(rows)
    print("\nSSIM, mean over the windows that see only the true background | over those that see the object")
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if "ssim_background" in mine[0]:
            print(f"{method:<14}{nan_mean(r['ssim_background'] for r in mine):8.3f} | {nan_mean(r['ssim_object'] for r in mine):.3f}")


def print_copying(rows: list[dict]) -> None:
    """How close each method's views are to the input view itself, per pose.

    PSNR against the truth cannot tell a prior that turns the object from one that returns its input
    a little blurred: near poses and round objects make the input a good guess.  The true views are
    as far from the input as the copy row's PSNR says; a prior that draws the asked-for view lands
    near that figure, one that ignores the pose far above it.
    """
    if "psnr_to_input" not in rows[0]:
        return
    truth_to_input = [statistics.mean(r["psnr"] for r in rows if r["method"] == "copy-input" and r["pose"] == j)
                      for j in range(len(TARGETS))]
    print("\nPSNR against the input view itself, per pose (copying the input: ∞); the true views score the copy row")
    print(f"{'true views':<14}" + "".join(f"  {v:13.2f}" for v in truth_to_input) + f"  {statistics.mean(truth_to_input):13.2f}")
    for method in dict.fromkeys(r["method"] for r in rows):
        if method == "copy-input":
            continue
        mine = [r for r in rows if r["method"] == method]
        cells = [statistics.mean(r["psnr_to_input"] for r in mine if r["pose"] == j) for j in range(len(TARGETS))]
        print(f"{method:<14}" + "".join(f"  {v:13.2f}" for v in cells) + f"  {statistics.mean(r['psnr_to_input'] for r in mine):13.2f}")


def print_silhouettes(rows: list[dict]) -> None:
    """Silhouette IoU against the true view, per pose: does the view put the object's outline where
    the camera would see it?  The copy row is how far the outline moves between the input and the
    true view; a prior that draws the outline right scores above it, one that copies scores it."""
    if "silhouette_iou" not in rows[0]:
        return
    print("\nsilhouette IoU against the true view, per pose (the copy row: how much the outline moves)")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cells = [nan_mean(r["silhouette_iou"] for r in mine if r["pose"] == j) for j in range(len(TARGETS))]
        print(f"{method:<14}" + "".join(f"  {v:13.3f}" for v in cells) + f"  {nan_mean(r['silhouette_iou'] for r in mine):13.3f}")


def nan_mean(values) -> float:
    """Mean of the values that are not NaN (a view whose object fills every window has no background)."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.mean(kept) if kept else math.nan


def identity_part(model: str, objects, guidances: list[float], seeds: int, steps: int) -> list[dict]:
    """The model asked for the input's own pose (T = 0): PSNR of its samples against the input.

    A diagnostic, not a target: a model that reads its concat input (the input view's latent,
    pixel-aligned with this target) can return it nearly unchanged; one that leans on the image
    embedding alone draws some object of the input's colours.
    """
    from sjc3d.views import sample_views

    prior = load_prior(model)
    source = input_c2w(INPUT_ELEVATION, INPUT_RADIUS)
    pose = zero123_pose(source, source[None])
    rows, embedding_norms, context_norms = [], [], []
    for k, obj in enumerate(objects):
        image = composite_on_white(true_view(obj, INPUT_ELEVATION, 0.0, INPUT_RADIUS, prior.image_size))
        prior.condition(image, INPUT_ELEVATION, INPUT_RADIUS)
        embedding_norms.append(float(prior.clip_embedding.norm()))
        context_norms.append(float(prior.context(pose).norm()))
        for guidance in guidances:
            for seed in range(seeds):
                sample = sample_views(prior, pose, steps, guidance, torch.Generator().manual_seed(1000 * k + seed))[0]
                rows.append({"object": k, "guidance": guidance, "seed": seed, "psnr": psnr(sample.cpu(), image)})
    # How far each pose entry can move the context: the norm of its column of the projection.
    weight = prior.projection.weight.detach().float()  # [D, D + 4]: embedding columns, then T's
    print("projection column norms of the pose entries (Δpolar, sin Δazimuth, cos Δazimuth, Δradius): "
          + ", ".join(f"{c:.3f}" for c in weight[:, -4:].norm(dim=0).tolist())
          + f"; of the image embedding's columns together: {weight[:, :-4].norm():.2f}")
    print(f"image embedding norm {min(embedding_norms):.3f}–{max(embedding_norms):.3f}, "
          f"context norm at T = 0 {min(context_norms):.3f}–{max(context_norms):.3f} (per object)")
    for guidance in guidances:
        values = [r["psnr"] for r in rows if r["guidance"] == guidance]
        print(f"input pose (T = 0), guidance {guidance:g}: PSNR against the input {statistics.mean(values):.2f} dB "
              f"(per object and seed {min(values):.1f}–{max(values):.1f})")
    return rows


# ----------------------------------------------------------------------------- 3D


def write_input_image(obj, path: Path) -> Path:
    from sjc3d.image import save_png

    return save_png(path, true_view(obj, INPUT_ELEVATION, 0.0, INPUT_RADIUS, FIT_INPUT_SIZE))


def reconstruct(obj, k: int, preset: str, overrides: list[str], out: Path) -> dict:
    from sjc3d.export.grid import EmptyFieldError
    from sjc3d.export.pipeline import field_geometry
    from sjc3d.rundir import load_run
    from sjc3d.trainer import fit

    image = write_input_image(obj, out / f"object{k}.png")
    config = load_config([preset], [*overrides])
    start = time.perf_counter()
    result = fit(config, image, out / f"object{k}", progress=False)
    fit_time = time.perf_counter() - start
    run = load_run(out / f"object{k}")
    timing = {"fit_s": fit_time, "ms_per_step": 1000 * fit_time / max(result.step, 1)}
    try:
        with torch.no_grad():  # geometry is what is scored: the export's mesh before colouring
            mesh = field_geometry(run.field, config.export)[0]
    except EmptyFieldError:  # nothing dense enough to mesh: no overlap with the truth at all
        return {"object": k, "iou": 0.0, "chamfer": math.nan, "f_score": 0.0, **timing}
    metrics = evaluate_meshes(mesh, obj.mesh())
    mesh.export(out / f"object{k}.ply")
    return {"object": k, "iou": metrics.iou, "chamfer": metrics.chamfer, "f_score": metrics.f_score, **timing}


def print_3d(rows: list[dict], variants: list[str]) -> None:
    print(f"\n3D: volume IoU / Chamfer per object, and the mean\n{'variant':<16}"
          + "".join(f"{'obj ' + str(k):>14}" for k in sorted({r['object'] for r in rows})) + f"{'mean IoU':>10}{'Chamfer':>9}{'ms/step':>9}")
    for name in variants:
        mine = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["object"])
        cells = "".join(f"{r['iou']:7.3f}/{r['chamfer']:.3f}" for r in mine)
        meshed = [r["chamfer"] for r in mine if not math.isnan(r["chamfer"])]  # Chamfer: over meshed fits
        print(f"{name:<16}{cells}{statistics.mean(r['iou'] for r in mine):10.3f}"
              f"{statistics.mean(meshed) if meshed else math.nan:9.4f}{statistics.mean(r['ms_per_step'] for r in mine):9.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value config overrides common to every 3D fit")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--part", choices=["views", "3d", "both", "identity"], default="both",
                        help="identity: a diagnostic, the model asked for the input's own pose")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0], help="novel views: guidance scales")
    parser.add_argument("--seeds", type=int, default=2, help="novel views: samples per pose")
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--eta", type=float, default=0.0, help="novel views: DDIM's η (0 deterministic, 1 DDPM)")
    parser.add_argument("--guidance-rescale", type=float, default=0.0,
                        help="novel views: φ of the guidance rescale (0 plain guidance)")
    parser.add_argument("--guidance-min-t", type=int, default=0,
                        help="novel views: guide only the DDIM steps with t >= this (0 every step)")
    parser.add_argument("--sample-mean", action="store_true",
                        help="novel views: also score the per-pixel mean of the --seeds samples of each view")
    parser.add_argument("--preset", default="learned-cpu")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps of the fits")
    parser.add_argument("--variant", nargs="+", action="append", default=None, metavar="NAME [KEY=VALUE]",
                        help="3D: a named set of overrides (repeatable); default: prior vs score-off")
    parser.add_argument("--out", type=Path, default=None, help="keep runs, meshes and results.json here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    objects = held_out_objects(args.objects)
    out = args.out or Path(tempfile.mkdtemp(prefix="sjc3d-learned-prior-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": args.model, "objects": args.objects}
    if args.part in ("views", "both"):
        results["views"] = views_part(args.model, objects, args.guidance, args.seeds, args.ddim_steps, args.eta,
                                      args.guidance_rescale, args.guidance_min_t, args.sample_mean)
        print_views(results["views"])
    if args.part == "identity":
        results["identity"] = identity_part(args.model, objects, args.guidance, args.seeds, args.ddim_steps)
    if args.part in ("3d", "both"):
        variants = args.variant or [["prior"], ["score-off", "sjc.weight=0"]]
        common = [f"prior.source={args.model}", *args.overrides]
        if args.steps is not None:
            common.append(f"train.steps={args.steps}")
        rows = []
        for name, *extra in variants:
            for k, obj in enumerate(objects):
                row = {"variant": name, **reconstruct(obj, k, args.preset, [*common, *extra], out / name)}
                rows.append(row)
                print(f"3d: {name} object {k}: IoU {row['iou']:.3f} Chamfer {row['chamfer']:.4f} "
                      f"({row['fit_s']:.0f} s, {row['ms_per_step']:.0f} ms/step)", flush=True)
        results["3d"] = rows
        print_3d(rows, [v[0] for v in variants])
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nresults: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
