"""Timings of the hash-grid encoding and of one render + backward pass.

    .venv/bin/python benchmarks/render.py [--repeats 5] [--threads 2]

Hash grid: forward + backward (gradient of the table only, as in training) of the default
encoding (16 levels × 2 features, 2^19 table) at uniformly random points — the worst case for
the cache; samples along real rays are spatially coherent and cheaper.  Render: one image of
the default field and render config (96 samples per ray, dense sampling on CPU), forward and
backward.  Each figure is the best of `--repeats` runs after one warm-up (the least disturbed
by other processes on a shared machine); the median is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sjc3d.cameras import spherical_to_c2w
from sjc3d.config import FieldConfig, RenderConfig
from sjc3d.fields import build_field
from sjc3d.fields.hashgrid import HashGridEncoding
from sjc3d.render import build_renderer


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(best, median) wall seconds of fn() over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def bench_hashgrid(n_points: int, device: torch.device, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    enc = HashGridEncoding().to(device)
    x = torch.rand(n_points, 3, device=device)

    def step():
        enc.zero_grad(set_to_none=True)
        enc(x).square().sum().backward()

    return timed(step, repeats, device)


def bench_render(resolution: int, device: torch.device, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    field = build_field(FieldConfig(), device=device)
    renderer = build_renderer(field, RenderConfig(), device=device).train()
    c2w = spherical_to_c2w(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([2.0])).to(device)
    background = torch.ones(field.n_channels, device=device)

    def step():
        field.zero_grad(set_to_none=True)
        renderer.render_views(c2w, 49.1, resolution, background).features.square().sum().backward()

    return timed(step, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for n in (65536, 262144):
            rows.append((device.type, f"hash grid fwd+bwd, {n:,} points", *bench_hashgrid(n, device, args.repeats)))
        for res in (32, 64):
            label = f"render+bwd {res}x{res} ({res * res * RenderConfig().n_samples:,} samples)"
            rows.append((device.type, label, *bench_render(res, device, args.repeats)))
    print(f"torch {torch.__version__}, {args.threads} CPU threads, best/median of {args.repeats}")
    print(f"{'device':<7} {'benchmark':<44} {'best':>9} {'median':>9}")
    for dev, label, best, med in rows:
        print(f"{dev:<7} {label:<44} {best * 1e3:7.1f}ms {med * 1e3:7.1f}ms")


if __name__ == "__main__":
    main()
