"""Procedural training views: speed and anti-aliasing quality of the sphere tracer, and make-views.

    flock /tmp/sjc3d-cpu.lock .venv/bin/python benchmarks/make_views.py [--objects 12] [--size 64]

Part 1 renders `--objects` procedural objects × 12 cameras (drawn as make-views draws them) at
each supersampling factor, with and without adaptive supersampling, and reports ms per view
(one thread, all views of an object traced together, as make-views does) and the error against
an 8×8-supersampled reference, composited on white: mean absolute error over all pixels and over
edge pixels (those whose reference alpha is strictly between 0 and 1), in 8-bit levels.  Part 2 times `make_views` end to end (PNG and .npy
writes included) with the default settings, in views per second.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--factors", default="1,2,3,4")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from sjc3d.datasets.make_views import ViewsSpec, make_views, object_cameras, procedural_object
    from sjc3d.datasets.raytrace import FOV_DEG, SUPERSAMPLE, composite_on_white, render_views

    spec = ViewsSpec(seed=1234, split="test", size=args.size)
    scenes = [(procedural_object(spec, k), object_cameras(spec, k)) for k in range(args.objects)]
    references = [render_views(obj, c2w, args.size, FOV_DEG, 8, adaptive=False) for obj, c2w in scenes]
    print(f"{args.objects} objects x {spec.n_views} views at {args.size}x{args.size}, one thread; "
          "errors against 8x8 supersampling, composited on white, in 8-bit levels")
    print("| supersample | adaptive | ms / view | views / s | error, all pixels | error, edge pixels |")
    print("|---|---|---|---|---|---|")
    for factor in (int(f) for f in args.factors.split(",")):
        for adaptive in ((False, True) if factor > 1 else (False,)):
            seconds, all_err, edge_err, n_edge = 0.0, 0.0, 0.0, 0
            for (obj, c2w), ref in zip(scenes, references):
                start = time.perf_counter()
                rgba = render_views(obj, c2w, args.size, FOV_DEG, factor, adaptive=adaptive)
                seconds += time.perf_counter() - start
                diff = (composite_on_white(rgba) - composite_on_white(ref)).abs().mean(dim=-1) * 255
                edge = (ref[..., 3] > 0) & (ref[..., 3] < 1)
                all_err += float(diff.mean())
                edge_err += float(diff[edge].sum())
                n_edge += int(edge.sum())
            n_views = args.objects * spec.n_views
            print(f"| {factor} | {'yes' if adaptive else 'no'} | {1000 * seconds / n_views:.1f} | "
                  f"{n_views / seconds:.0f} | {all_err / args.objects:.2f} | {edge_err / max(n_edge, 1):.1f} |")

    with tempfile.TemporaryDirectory() as out:
        report = make_views(out, args.objects, size=args.size, seed=1234, progress=False)
    print(f"make_views end to end (supersample {SUPERSAMPLE}, PNG + .npy writes, 1 worker): "
          f"{report.views_per_second:.0f} views/s, {1000 / report.views_per_second:.1f} ms/view")


if __name__ == "__main__":
    main()
