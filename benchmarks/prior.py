"""Benchmark of the Zero-1-to-3 prior at its real size (random weights, nothing downloaded).

The UNet is built from the published architecture (../shared/zero123/README.md: 8 → 4
channels, blocks 320/640/1280/1280, 2 layers per block, cross-attention 768, 8 heads), the
image encoder from the CLIP ViT-L/14 vision config, the VAE from the published vae/config.json.
Timed: `condition` (CLIP + VAE encode of a 256² view) and one `denoise` with classifier-free
guidance (one UNet call of batch 2B) for B = 1 and 4 poses on 32×32 latents — the SJC step's
cost — plus `encode` of one 256² image (the RGB render mode).

    .venv/bin/python benchmarks/prior.py                 # CPU, and CUDA when present
    .venv/bin/python benchmarks/prior.py --device cuda --repeats 10

Memory: CUDA reports torch.cuda.max_memory_allocated per phase; CPU reports the process's
peak resident set size (getrusage ru_maxrss) after each phase — weights included, since torch
allocations are invisible to tracemalloc.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sjc3d.priors.loading import DEFAULT_SCHEDULER, _quiet  # noqa: E402
from sjc3d.priors.zero123 import Zero123Prior  # noqa: E402

SHARED = ROOT.parent / "shared" / "zero123"
UNET = dict(
    sample_size=32, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
)
VAE_FALLBACK = dict(
    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4, sample_size=256,
    scaling_factor=0.18215,
)


def vae_config() -> dict:
    path = SHARED / "bennyguo_zero123-diffusers" / "vae" / "config.json"
    if not path.is_file():
        return VAE_FALLBACK
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def build_prior(device: torch.device, dtype: torch.dtype) -> Zero123Prior:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")
    parts = [UNet2DConditionModel(**UNET), AutoencoderKL(**vae_config()), CLIPVisionModelWithProjection(clip),
             torch.nn.Linear(772, 768)]
    with _quiet():  # diffusers warns about any .to(dtype) cast
        parts = [p.to(device=device, dtype=dtype).eval().requires_grad_(False) for p in parts]
    return Zero123Prior(*parts, scheduler_config=DEFAULT_SCHEDULER)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(median seconds over `repeats` after one warm-up call, peak memory in GiB)."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_memory_gib(device)


def run(device: torch.device, repeats: int, batches: list[int], guidance: float):
    """Yield (phase, seconds, peak GiB) rows as they are measured."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    start = time.perf_counter()
    torch.manual_seed(0)
    prior = build_prior(device, dtype)
    yield "build (random init)", time.perf_counter() - start, peak_memory_gib(device)
    image = torch.rand(256, 256, 3)
    yield "condition (CLIP + VAE, 256²)", *timed(lambda: prior.condition(image, 0.0, 2.0), device, repeats)
    for b in batches:
        z = torch.randn(b, 4, 32, 32, device=device)
        sigma = prior.sigmas[torch.randint(10, 970, (b,))]
        pose = torch.tensor([[0.1, 0.5, 0.8, 0.0]] * b)
        yield f"denoise B={b} (UNet batch {2 * b}, CFG)", *timed(lambda: prior.denoise(z, sigma, pose, guidance), device, repeats)
    rgb = torch.rand(1, 256, 256, 3, device=device, requires_grad=True)
    yield "encode 1×256² + backward", *timed(lambda: prior.encode(rgb).sum().backward(), device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = CPU, then CUDA when present")
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per row (default 1 CPU, 10 CUDA)")
    parser.add_argument("--batches", default="1,4", help="pose batch sizes")
    parser.add_argument("--guidance", type=float, default=100.0)
    args = parser.parse_args()
    devices = [torch.device(args.device)] if args.device != "auto" else [torch.device("cpu")]
    if args.device == "auto" and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        repeats = args.repeats or (10 if device.type == "cuda" else 1)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        memory = "peak allocated GiB" if device.type == "cuda" else "peak RSS GiB"
        print(f"\n{name} ({'float16' if device.type == 'cuda' else 'float32'}, median of {repeats})")
        print(f"{'phase':<40} {'seconds':>10} {memory:>20}")
        for label, seconds, gib in run(device, repeats, batches, args.guidance):
            print(f"{label:<40} {seconds:>10.3f} {gib:>20.2f}", flush=True)


if __name__ == "__main__":
    main()
