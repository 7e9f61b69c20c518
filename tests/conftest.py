"""Test-wide set-up: offline, private caches, deterministic CPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub or torch's extension loader.
_CACHE = Path(tempfile.mkdtemp(prefix="sjc3d-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", str(_CACHE / "hf"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(_CACHE / "torch_extensions"))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return SHARED


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return DATA


# --------------------------------------------------------------------------- Zero-1-to-3 (tiny)


@pytest.fixture(scope="session")
def tiny_zero123(tmp_path_factory) -> dict:
    """Tiny random Zero-1-to-3 models in every public layout (see tests/zero123_fixtures.py).

    {"cc": folder, "ccp": folder, "stable": folder, "ckpt": .ckpt file,
     "image_encoder": folder holding image_encoder/} — all the same weights.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from zero123_fixtures import build_all

    return build_all(tmp_path_factory.mktemp("zero123"))


@pytest.fixture(scope="session")
def tiny_zero123_prior(tiny_zero123):
    """A loaded Zero123Prior (clip_camera_projection layout, CPU, float32), not yet conditioned."""
    from sjc3d.priors.zero123 import load_zero123

    return load_zero123(str(tiny_zero123["ccp"]), device="cpu")


@pytest.fixture()
def single_thread():
    """One intra-op thread for the duration of a test (restored after).

    The tiny models' kernels take about a millisecond; on a shared, busy CPU the hand-off
    between two threads costs tens of milliseconds per kernel, which would dominate.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
