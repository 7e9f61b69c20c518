"""Make `assets/example.png`, the photo `make demo` turns into a mesh with the shipped learned prior.

The object is number EXAMPLE_INDEX of the `test` split of `sjc3d make-views` (seed 0): a box
with a dotted ball on top, drawn from streams the training split never uses, so the shipped
prior (trained on the `train` split) has never seen it.  It is rendered by the training
renderer (sphere tracing, Lambert shading, 4× supersampling) at the fit's input camera —
elevation 0°, azimuth 0°, radius 2 — as an RGBA image with a transparent background, the way a
user's cut-out photo arrives.  `assets/example.json` describes the object, so the demo can score
its mesh against the truth.  Run: python assets/make_example.py
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sjc3d.cameras import input_c2w
from sjc3d.datasets.make_views import ViewsSpec, procedural_object
from sjc3d.datasets.raytrace import render_views
from sjc3d.image import save_png

EXAMPLE_INDEX = 114
SIZE = 256
HERE = Path(__file__).resolve().parent


def main() -> None:
    obj = procedural_object(ViewsSpec(seed=0, split="test"), EXAMPLE_INDEX)
    rgba = render_views(obj, input_c2w(0.0, 2.0), SIZE)[0]
    save_png(HERE / "example.png", rgba)
    record = {"split": "test", "seed": 0, "index": EXAMPLE_INDEX, "camera": {"elevation": 0.0, "azimuth": 0.0, "radius": 2.0},
              "object": obj.to_dict()}
    (HERE / "example.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {HERE / 'example.png'} and example.json")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
