"""Packaging: installing sjc3d never caps (and so never downgrades) the user's torch."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def test_torch_has_a_floor_and_no_ceiling():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert len(torch) == 1
    spec = torch[0].specifier
    assert "2.13.0" in spec and "2.13.0+cu128" in spec  # the Makefile's CPU wheel; a CUDA build of it
    for newer in ("2.14.0", "3.0.0", "9.9"):  # a user's newer CUDA build stays as it is
        assert newer in spec, f"pyproject.toml caps torch: {spec}"
    assert "2.0.1" not in spec  # the floor the engine needs (torch.func, weights_only loading)


def test_the_makefile_still_installs_torch_2_13_first():
    makefile = (ROOT / "Makefile").read_text()
    torch_line = makefile.index("pip install --quiet torch==2.13.0")
    assert torch_line < makefile.index("pip install --quiet -e")
