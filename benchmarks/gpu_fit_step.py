"""Milliseconds per latent-mode fit step with the real-size Zero-1-to-3 (random weights), fp16 and bf16.

    python benchmarks/gpu_fit_step.py                          # CUDA: fp16 and bf16
    python benchmarks/gpu_fit_step.py --steps 30 --json out.json
    python benchmarks/gpu_fit_step.py --device cpu --miniature # checks the script without a GPU

One step is the reference preset's step (configs/reference.yaml): a random 32×32 latent view of
the hash-grid field rendered with nerfacc, the PAAS score from the UNet with guidance 100 (one
UNet call of batch 2), the chained gradient, the reference-view loss at the input camera and the
regularisers, then the optimiser step (sjc3d.step.train_step).  The prior is the published
architecture (benchmarks/prior.py: UNet 320/640/1280/1280, CLIP ViT-L/14 image encoder, the
published VAE) with random weights: speed and memory do not depend on the values.

Reported per dtype: the median and best step time over `--steps` steps after `--warmup` steps,
and the peak CUDA memory of those steps (torch.cuda.max_memory_allocated, weights included).
`--miniature` swaps in a tiny UNet/VAE/CLIP (64² views, 8² latents) so the whole path runs on a
CPU in seconds; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def real_size_parts() -> list[torch.nn.Module]:
    """UNet, VAE, CLIP image encoder and camera projection of the published Zero-1-to-3 architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from prior import UNET, vae_config  # benchmarks/prior.py: the one place the architecture is written down
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")
    return [UNet2DConditionModel(**UNET), AutoencoderKL(**vae_config()), CLIPVisionModelWithProjection(clip),
            torch.nn.Linear(772, 768)]


def miniature_parts() -> list[torch.nn.Module]:
    """The same interfaces at toy size (64² views → 8² latents): for checking the script on a CPU."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    unet = UNet2DConditionModel(sample_size=8, in_channels=8, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=[32, 32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, latent_channels=4,
                        sample_size=64, scaling_factor=0.18215, norm_num_groups=32)
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=224, patch_size=32, projection_dim=768, hidden_act="quick_gelu")
    return [unet, vae, CLIPVisionModelWithProjection(clip), torch.nn.Linear(772, 768)]


def build_prior(device: torch.device, dtype: torch.dtype, miniature: bool):
    """A Zero123Prior of random weights, built directly on `device` (no multi-second CPU initialisation)."""
    from sjc3d.priors.loading import DEFAULT_SCHEDULER, _quiet
    from sjc3d.priors.zero123 import Zero123Prior

    torch.manual_seed(0)
    with torch.device(device):
        parts = miniature_parts() if miniature else real_size_parts()
    with _quiet():  # diffusers warns about any .to(dtype) cast
        parts = [p.to(dtype=dtype).eval().requires_grad_(False) for p in parts]
    return Zero123Prior(*parts, scheduler_config=DEFAULT_SCHEDULER)


def input_view(size: int):
    """A red disc on white: the conditioning view (its content does not change the cost)."""
    from sjc3d.image import InputView

    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.35 * size) ** 2).float()
    rgb = torch.ones(size, size, 3)
    rgb[mask > 0] = torch.tensor([0.8, 0.2, 0.2])
    return InputView(rgb, mask)


def measure(device: torch.device, dtype: torch.dtype, steps: int, warmup: int, miniature: bool) -> dict:
    """Build the stage once for `dtype` and time `steps` train steps after `warmup` ones."""
    from sjc3d.config import load_config
    from sjc3d.step import build_stage, train_step

    t0 = time.perf_counter()
    prior = build_prior(device, dtype, miniature)
    latent = prior.image_size // prior.latent_factor
    config = load_config(["reference"], [f"train.device={device}", f"camera.resolution={latent}",
                                         f"input.size={prior.image_size}", f"train.steps={warmup + steps}"])
    stage = build_stage(config, None, view=input_view(prior.image_size), prior=prior)
    build_s = time.perf_counter() - t0

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for step in range(1, warmup + 1):
        train_step(stage, step)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(warmup + 1, warmup + steps + 1):
        start = time.perf_counter()
        train_step(stage, step)
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"dtype": str(dtype).replace("torch.", ""), "latent": latent, "build_s": round(build_s, 2),
            "ms_per_step_median": round(1e3 * statistics.median(times), 2), "ms_per_step_best": round(1e3 * min(times), 2),
            "peak_gib": round(peak, 3), "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtypes", default="float16,bfloat16", help=f"comma-separated, of {', '.join(DTYPES)}")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--miniature", action="store_true", help="toy-size prior: check the script, not the speed")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_fit_step: no CUDA device (use --device cpu --miniature to check the script)", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"latent-mode fit step, {'miniature' if args.miniature else 'real-size'} Zero-1-to-3 (random weights), "
          f"guidance 100, on {where}, torch {torch.__version__}")
    rows, failed = [], False
    for name in args.dtypes.split(","):
        try:
            row = measure(device, DTYPES[name.strip()], args.steps, args.warmup, args.miniature)
        except Exception as e:  # one dtype failing (bf16 unsupported, out of memory) must not hide the other
            failed = True
            print(f"  {name}: FAILED {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            continue
        rows.append(row)
        print(f"  {row['dtype']:>9}: {row['ms_per_step_median']:8.2f} ms/step median, {row['ms_per_step_best']:8.2f} best "
              f"({row['steps']} steps, {row['latent']}² latents), peak {row['peak_gib']:.2f} GiB, built in {row['build_s']} s")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
