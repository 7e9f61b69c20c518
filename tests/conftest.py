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
