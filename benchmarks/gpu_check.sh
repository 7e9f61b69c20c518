#!/usr/bin/env bash
# One GPU smoke check of sjc3d, for a machine with a CUDA GPU.  Run from the repository root:
#
#     bash benchmarks/gpu_check.sh              # the check (8 minutes at most)
#     bash benchmarks/gpu_check.sh --dry-run    # print the parts and their commands, run nothing
#     bash benchmarks/gpu_check.sh --cpu        # the parts that need no GPU (checks this script)
#     bash benchmarks/gpu_check.sh --fetch-wheels DIR   # on a machine with PyPI: wheels the GPU box lacks
#
# Parts, each with its own time limit inside an 8-minute budget; a part that fails says why and
# the next one runs (the summary at the end lists them all; exit 1 if any failed, a part that
# exits 3 is "not available here" and only skipped):
#   1. environment   nvidia-smi, python, torch, the device
#   2. packages      sjc3d's imports; wheels in .whl/ (or $SJC3D_WHEELS) are installed first
#   3. nerfacc       builds (JIT, once) or loads nerfacc's CUDA ops
#   4. tinycudann    imports it, or builds it from a local source tree ($TCNN_SOURCE), or says why not
#   5. cuda tests    pytest -m cuda (hash-grid backends and checkpoint conversion, occupancy grid, fp16 prior)
#   6. fit step      ms/step and peak memory of a latent-mode fit step, real-size Zero-1-to-3
#                    (random weights), fp16 and bf16 (benchmarks/gpu_fit_step.py)
#
# Environment: PYTHON (default: python3, or .venv/bin/python when its torch sees CUDA),
# GPU_CHECK_BUDGET (seconds, default 480), TCNN_SOURCE (a tiny-cuda-nn checkout with submodules),
# SJC3D_WHEELS (a folder of wheels, default .whl).  Nothing is downloaded here.
set -u

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --cpu) MODE=cpu ;;
  --fetch-wheels) MODE=fetch ;;
  -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
  "") ;;
  *) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
esac

# Packages the CUDA image lacks (see the device notes); the others (torch, transformers,
# safetensors, scipy, typer, rich, yaml, PIL, imageio, huggingface_hub) are there.
WHEELS_NEEDED="diffusers nerfacc==0.5.3 PyMCubes trimesh fast-simplification"
if [ "$MODE" = fetch ]; then
  dest=${2:?usage: gpu_check.sh --fetch-wheels DIR}
  mkdir -p "$dest"
  for pkg in $WHEELS_NEEDED; do
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$dest" "$pkg" || echo "gpu_check: no wheel for $pkg" >&2
  done
  ls -1 "$dest"
  exit 0
fi

BUDGET=${GPU_CHECK_BUDGET:-480}
START=$(date +%s)
LOG_DIR=${GPU_CHECK_LOGS:-/tmp/sjc3d-gpu-check}
mkdir -p "$LOG_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# One extension folder for the whole check, so that pytest reuses the nerfacc build of part 3
# (tests/conftest.py only sets its private folder when none is set).
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/sjc3d-torch-extensions}
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ] && { [ "$MODE" = cpu ] ||
     .venv/bin/python -c 'import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }; then PY=.venv/bin/python
else PY=python3
fi

SUMMARY=()
FAILED=0

# part NAME LIMIT COMMAND...: run COMMAND with min(LIMIT, budget left) seconds; record the outcome.
part() {
  local name=$1 limit=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - START) - 5 ))
  if [ "$MODE" = dry ]; then
    printf '== %s (at most %ss)\n   %s\n' "$name" "$limit" "$*"
    return 0
  fi
  if [ "$left" -lt 10 ]; then
    SUMMARY+=("SKIP  $name (the ${BUDGET}s budget is spent)"); FAILED=1; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  printf '\n== %s (limit %ss)\n' "$name" "$limit"
  local t0=$(date +%s) log="$LOG_DIR/$(echo "$name" | tr ' /' '__').log" rc
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then SUMMARY+=("ok    $name (${took}s)")
  elif [ "$rc" -eq 3 ]; then SUMMARY+=("SKIP  $name: not available on this machine (log $log)")
  elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then SUMMARY+=("FAIL  $name: timed out after ${limit}s (log $log)"); FAILED=1
  else SUMMARY+=("FAIL  $name: exit $rc (${took}s; log $log)"); FAILED=1
  fi
  return "$rc"
}

# ------------------------------------------------------------------------------ 1. environment
part "environment" 30 bash -c "
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: not available'
  command -v nvcc >/dev/null && nvcc --version | tail -1 || echo 'nvcc: not on PATH (nerfacc and tinycudann cannot be built)'
  $PY - <<'EOF'
import sys, torch
print(f'python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, CUDA build {torch.version.cuda}')
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f'device: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}')
else:
    print('no CUDA device visible to torch')
    sys.exit(0 if '$MODE' == 'cpu' else 1)
EOF"

# ------------------------------------------------------------------------------ 2. packages
WHEELS=${SJC3D_WHEELS:-.whl}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  part "install carried wheels" 90 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/sjc3d-site "$WHEELS"/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/sjc3d-site"
fi
part "packages" 60 $PY - <<'EOF'
import importlib, sys
needed = ["torch", "numpy", "diffusers", "transformers", "safetensors", "nerfacc", "mcubes", "trimesh", "scipy",
          "typer", "rich", "yaml", "PIL", "imageio", "huggingface_hub", "fast_simplification"]
missing = []
for name in needed:
    try:
        module = importlib.import_module(name)
        print(f"  {name:20s} {getattr(module, '__version__', '')}")
    except Exception as e:
        missing.append(name)
        print(f"  {name:20s} MISSING ({type(e).__name__}: {e})")
import sjc3d
print(f"sjc3d {sjc3d.__version__} from {sjc3d.__file__}")
if missing:
    print(f"missing: {' '.join(missing)} -- carry them as wheels: bash benchmarks/gpu_check.sh --fetch-wheels .whl "
          "on a machine with PyPI, then bring .whl/ along")
    sys.exit(1)
EOF

# ------------------------------------------------------------------------------ 3. nerfacc
# Build for this device's architecture only (minutes less than all of them).
ARCH=$($PY -c 'import torch; p = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None; print(f"{p[0]}.{p[1]}" if p else "")' 2>/dev/null)
[ -n "$ARCH" ] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
if [ "$MODE" != cpu ]; then
  part "nerfacc CUDA ops" 240 $PY - <<'EOF'
import sys, time
t = time.perf_counter()
from sjc3d.render.volume import nerfacc_cuda_available
ok = nerfacc_cuda_available()
print(f"nerfacc CUDA extension {'loaded' if ok else 'NOT available'} in {time.perf_counter() - t:.0f} s")
if ok:
    import torch
    from sjc3d.config import FieldConfig, RenderConfig
    from sjc3d.fields import build_field
    from sjc3d.render import build_renderer
    from sjc3d.cameras import spherical_to_c2w
    field = build_field(FieldConfig(backend="torch"), device="cuda")
    renderer = build_renderer(field, RenderConfig(estimator="occgrid"), device="cuda")
    c2w = spherical_to_c2w(torch.tensor([15.0]), torch.tensor([30.0]), torch.tensor([2.0])).cuda()
    out = renderer.render_views(c2w, 49.1, 64, torch.ones(4, device="cuda"))
    print(f"occupancy-grid render 64x64: opacity mean {out.opacity.mean().item():.3f}")
sys.exit(0 if ok else 1)
EOF
fi

# ------------------------------------------------------------------------------ 4. tinycudann
tcnn_step() {
  if $PY -c 'import tinycudann' 2>/dev/null; then
    echo "tinycudann imports"; return 0
  fi
  if [ -n "${TCNN_SOURCE:-}" ] && [ -d "$TCNN_SOURCE/bindings/torch" ]; then
    local cc; cc=$(echo "${ARCH:-9.0}" | tr -d .)
    echo "building tinycudann from $TCNN_SOURCE for sm_$cc (several minutes)"
    TCNN_CUDA_ARCHITECTURES=$cc $PY -m pip install -q --no-build-isolation --no-deps "$TCNN_SOURCE/bindings/torch" &&
      $PY -c 'import tinycudann; print("tinycudann built and imports")'
    return $?
  fi
  echo "tinycudann is not installed and cannot be installed here: it is not on PyPI, and its build needs the"
  echo "tiny-cuda-nn source with its submodules (set TCNN_SOURCE to a checkout carried along)."
  echo "The tcnn tests will skip; the torch hash grid runs on CUDA instead."
  return 3
}
if [ "$MODE" != cpu ]; then
  export -f tcnn_step; export PY ARCH
  part "tinycudann" 420 bash -c tcnn_step
fi

# ------------------------------------------------------------------------------ 5. cuda tests
if [ "$MODE" != cpu ]; then
  part "cuda tests" 240 $PY -m pytest -q -m cuda -p no:cacheprovider --continue-on-collection-errors -rs tests
fi

# ------------------------------------------------------------------------------ 6. fit step
if [ "$MODE" = cpu ]; then
  part "fit step (miniature, CPU)" 120 $PY benchmarks/gpu_fit_step.py --device cpu --miniature \
    --dtypes float32,bfloat16 --steps 2 --warmup 1 --json "$LOG_DIR/fit_step.json"
else
  part "fit step (real-size, fp16 + bf16)" 240 $PY benchmarks/gpu_fit_step.py --device cuda \
    --dtypes float16,bfloat16 --steps 20 --warmup 3 --json "$LOG_DIR/fit_step.json"
fi

[ "$MODE" = dry ] && exit 0
printf '\n== summary (%ss of %ss; logs in %s)\n' "$(( $(date +%s) - START ))" "$BUDGET" "$LOG_DIR"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
