#!/usr/bin/env bash
# The A/B runs behind the fit's defaults (README, "Defaults, and where they differ from the
# reference run").  Each command prints one table; run them on an otherwise idle machine
# (on the shared build machine: under `flock /tmp/sjc3d-cpu.lock`).
#
#   bash benchmarks/fit_defaults_ab.sh oracle    # RGB mode, ground-truth prior (~1.5 h on 2 cores)
#   bash benchmarks/fit_defaults_ab.sh learned   # latent mode, the shipped learned prior
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MESHES=../shared/data/meshes
part=${1:-oracle}

if [[ $part == oracle ]]; then
  # The baseline of the README's tables: oracle-cpu as it was before these measurements chose its
  # learning rates and reference weight (one lr of 0.01, ref_rgb 1e4 on the [-1, 1] scale).
  BASE="train.lr=0.01 train.lr_grid=0 loss.ref_rgb=1e4"
  # Regularisers: none (the oracle-cpu preset), sjc3d's forms (the library defaults), the reference's forms.
  $PY benchmarks/oracle_reconstruction.py $MESHES/spot.obj $MESHES/blub.obj $MESHES/fuze.obj $BASE \
    --variant off loss.near_view=0 loss.depth_smooth=0 \
    --variant today loss.near_view=1e4 loss.near_view_mode=input loss.depth_smooth=1e4 loss.depth_smooth_mode=squared \
    --variant reference loss.near_view=1e4 loss.depth_smooth=1e4 loss.near_view_mode=reference loss.depth_smooth_mode=reference
  # Cameras, reference-loss scale, mask, learning rates (regularisers off, as the preset).
  $PY benchmarks/oracle_reconstruction.py $MESHES/spot.obj $MESHES/blub.obj $BASE loss.near_view=0 loss.depth_smooth=0 \
    --variant cam-today camera.sampling=elevation "camera.radius_range=[2.0,2.0]" \
    --variant cam-refrange "camera.elevation_range=[-14.5,90.0]" \
    --variant ref-2500 loss.ref_rgb=2500 \
    --variant nomask loss.ref_mask=0 \
    --variant g.03-m.01 train.lr_grid=0.03 train.lr=0.01 \
    --variant g.01-m.001 train.lr_grid=0.01 train.lr=0.001 \
    --variant g.03-m.003 train.lr_grid=0.03 train.lr=0.003 \
    --variant g.1-m.01 train.lr_grid=0.1 train.lr=0.01 \
    --variant refregs-1e3 loss.near_view=1e3 loss.depth_smooth=1e3 loss.near_view_mode=reference loss.depth_smooth_mode=reference
  # Which of the reference's terms hurts the oracle.
  $PY benchmarks/oracle_reconstruction.py $MESHES/spot.obj $MESHES/blub.obj $BASE \
    --variant ref-near loss.near_view=1e4 loss.depth_smooth=0 loss.near_view_mode=reference \
    --variant ref-smooth loss.near_view=0 loss.depth_smooth=1e4 loss.depth_smooth_mode=reference
elif [[ $part == learned ]]; then
  # Latent mode with the shipped toy prior (preset learned-cpu: regularisers off), 3D part only.
  # Regularisers: the reference's forms at 1e4 (configs/reference.yaml's), then off — 2 objects, 300 steps.
  $PY benchmarks/learned_prior.py --part 3d --objects 2 --steps 300 \
    --variant refregs loss.near_view=1e4 loss.depth_smooth=1e4 loss.near_view_mode=reference loss.depth_smooth_mode=reference \
    --variant off \
    --variant off-scoreoff sjc.weight=0
  # The other forms and weights, and the encoded reference loss, against the preset (4 objects).
  $PY benchmarks/learned_prior.py --part 3d --objects 4 \
    --variant earlier-forms loss.near_view=1e4 loss.near_view_mode=input loss.depth_smooth=1e4 loss.depth_smooth_mode=squared \
    --variant ref-at-1e3 loss.near_view=1e3 loss.depth_smooth=1e3 loss.near_view_mode=reference loss.depth_smooth_mode=reference \
    --variant encoded-ref loss.ref_space=latent
  # The two regulariser forms at 1e4 on 4 objects, 600 steps (off: the preset, the 3D benchmark's fits).
  $PY benchmarks/learned_prior.py --part 3d --objects 4 \
    --variant sjc3d-forms loss.near_view=1e4 loss.depth_smooth=1e4 \
    --variant reference-forms loss.near_view=1e4 loss.depth_smooth=1e4 loss.near_view_mode=reference loss.depth_smooth_mode=reference
  # Learning rates in latent mode (regularisers off; the preset is grid 0.03 / MLP 0.003).
  $PY benchmarks/learned_prior.py --part 3d --objects 4 \
    --variant g.03-m.003 \
    --variant one-0.05 train.lr=0.05 train.lr_grid=0 \
    --variant g.01-m.001 train.lr_grid=0.01 train.lr=0.001 \
    --variant g.1-m.01 train.lr_grid=0.1 train.lr=0.01
else
  echo "usage: $0 oracle|learned" >&2
  exit 2
fi
