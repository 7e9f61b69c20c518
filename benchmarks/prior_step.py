"""One training step of the toy prior's denoiser: float32 vs bf16 autocast, AdamW per-tensor vs fused,
and (--compile) torch.compile'd with contiguous or channels-last weights.

    python benchmarks/prior_step.py [--batch 32] [--repeats 10] [--compile]

Builds the UNet + CLIP image encoder + pose projection of `configs/prior/toy.yaml` with random
weights, and times what `PriorTrainer.train_diffusion` does per step — the conditioned denoiser's
forward pass (under `train_prior.loop.autocast`), the float32 ε loss, backward and the AdamW
update — on random inputs of the toy's shapes (16² latents, 64² conditioning images). Prints the
median and best of `--repeats` steps after 3 warm-up steps. `--compile` adds torch.compile'd
variants (minutes of compiling first). Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sjc3d.train_prior.config import load_training_config  # noqa: E402
from sjc3d.train_prior.loop import ConditionedDenoiser, autocast  # noqa: E402
from sjc3d.train_prior.model import build_components  # noqa: E402


def time_steps(arithmetic: str, fused: bool, compiled: bool, batch: int, repeats: int,
               channels_last: bool = False) -> tuple[float, float, float]:
    """(median s, best s, s of the warm-up steps) of one training step."""
    torch.manual_seed(0)
    cfg = load_training_config("toy")
    denoiser = ConditionedDenoiser(build_components(cfg.model), "zeros").train()
    if channels_last:  # as `diffusion.compile` trains (train_prior/loop.py)
        denoiser = denoiser.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in denoiser.parameters() if p.requires_grad], lr=1e-4, fused=fused or None)
    model = torch.compile(denoiser) if compiled else denoiser
    c, s = cfg.model.latent_channels, cfg.model.image_size // 4
    x_t, concat, noise = torch.randn(batch, c, s, s), torch.randn(batch, c, s, s), torch.randn(batch, c, s, s)
    t = torch.randint(0, 1000, (batch,))
    images = torch.rand(batch, 3, cfg.model.clip_image_size, cfg.model.clip_image_size) * 2 - 1
    pose = torch.randn(batch, 4)
    drop = torch.zeros(batch, dtype=torch.bool)
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, arithmetic):
            prediction = model(x_t, concat, t, images, pose, drop)
        loss = (prediction.float() - noise).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.perf_counter()
    for _ in range(3):
        step()
    warm_up = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), warm_up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd denoisers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [("float32", False, False, False), ("float32", True, False, False), ("bf16", False, False, False),
                ("bf16", True, False, False)]
    if args.compile:
        variants += [("float32", True, True, False), ("bf16", True, True, False), ("bf16", True, True, True)]
    print(f"toy denoiser, one training step at batch {args.batch}, {args.threads} threads")
    print(f"{'arithmetic':<11}{'AdamW':<11}{'compiled':<16}{'median s':>9}{'best s':>8}{'warm-up s':>11}")
    for arithmetic, fused, compiled, channels_last in variants:
        median, best, warm_up = time_steps(arithmetic, fused, compiled, args.batch, args.repeats, channels_last)
        how = ("yes, NHWC" if channels_last else "yes") if compiled else "no"
        print(f"{arithmetic:<11}{'fused' if fused else 'per-tensor':<11}{how:<16}"
              f"{median:9.3f}{best:8.3f}{warm_up:11.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
