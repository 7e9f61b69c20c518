"""The command line: --help and --version load no heavy library; the model flag is --model everywhere."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import sjc3d
from sjc3d.cli import app

# What makes a start slow: any of these at import time turns an instant --help into seconds.
HEAVY = ("torch", "numpy", "diffusers", "transformers", "nerfacc", "trimesh", "scipy", "PIL", "ray", "huggingface_hub")

PROBE = """
import json, sys
sys.argv = ["sjc3d", *{args!r}]
from sjc3d.cli import app
try:
    app()
except SystemExit as e:
    code = e.code
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set({heavy!r}))
print("PROBE", json.dumps({{"code": code, "heavy": heavy}}))
"""


def probe(*args: str) -> tuple[dict, str]:
    """Run the CLI in a fresh interpreter; report its exit code and the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=list(args), heavy=HEAVY)],
                            capture_output=True, text=True)
    line = [line for line in result.stdout.splitlines() if line.startswith("PROBE ")]
    assert line, result.stderr
    return json.loads(line[-1][len("PROBE "):]), result.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["fit", "--help"], ["views", "--help"],
                                  ["export", "--help"], ["sweep", "--help"]])
def test_help_and_version_import_no_heavy_library(args):
    report, stdout = probe(*args)
    assert report["code"] in (0, None)
    assert report["heavy"] == [], f"`sjc3d {' '.join(args)}` imported {report['heavy']}"
    if args == ["--version"]:
        assert f"sjc3d {sjc3d.__version__}" in stdout
    if args == ["--help"]:
        for command in ("fit", "export", "views", "sweep", "config", "render", "eval"):
            assert command in stdout


def test_the_probe_sees_a_heavy_import():
    """The check above can fail: a command body that runs does import torch."""
    report, _ = probe("eval", "--mesh", "missing.glb", "--gt", "missing.obj")
    assert report["code"] != 0 and report["heavy"], "running a command body imports its implementation"


@pytest.mark.parametrize("flag", ["--model", "--prior"])
def test_fit_takes_the_model_with_model_or_prior(flag, tmp_path):
    """`fit --model` (and the older `--prior`) set prior.source; a missing model is one line naming --model."""
    from PIL import Image

    image = tmp_path / "object.png"
    Image.new("RGBA", (64, 64), (200, 30, 30, 255)).save(image)
    missing = tmp_path / "no-such-model"
    result = CliRunner().invoke(app, ["fit", str(image), flag, str(missing), "--steps", "1", "--out", str(tmp_path / "run"),
                                      "--device", "cpu"])
    assert result.exit_code == 3, result.output  # ModelNotFoundError
    message = result.output.strip()
    assert message.startswith("error: Zero-1-to-3 model") and str(missing) in message
    assert "--model /path/to/folder" in message and "\n" not in message
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


def test_views_takes_the_model_with_the_same_flag(tmp_path):
    from PIL import Image

    image = tmp_path / "object.png"
    Image.new("RGBA", (64, 64), (200, 30, 30, 255)).save(image)
    missing = tmp_path / "no-such-model"
    result = CliRunner().invoke(app, ["views", str(image), "--model", str(missing), "--steps", "1", "--device", "cpu",
                                      "--out", str(tmp_path / "views")])
    assert result.exit_code == 3, result.output
    assert str(missing) in result.output and "--model /path/to/folder" in result.output


def test_an_oracle_fit_needs_no_preset_and_no_download(tmp_path):
    """`fit --model oracle:MESH` with every default runs offline: the oracle encodes with the
    shipped toy model's VAE and the latent renders take that model's latent size (auto)."""
    import yaml

    from sjc3d.config import SHIPPED_MODEL
    from sjc3d.priors import resolve_project_path

    mesh = resolve_project_path("../shared/data/meshes/spot.obj")
    if not mesh.exists() or not resolve_project_path(SHIPPED_MODEL).exists():
        pytest.skip("needs ../shared/data and the shipped model")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["fit", "--model", f"oracle:{mesh}", "--steps", "2", "--device", "cpu",
                                      "--out", str(run), "field.log2_hashmap_size=12", "train.preview_every=0",
                                      "export.resolution=16"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["field"]["output"] == "latent" and saved["camera"]["resolution"] == 16  # 64² / factor 4
