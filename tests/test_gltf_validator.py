"""An exported GLB passes the Khronos glTF validator (npm `gltf-validator`) without errors.

The validator is installed on first use into a cache folder (SJC3D_NODE_CACHE, default
<tmp>/sjc3d-gltf-validator) with `npm install`; without node/npm or the npm registry the
test skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import trimesh

from sjc3d.config import ExportConfig
from sjc3d.export import export_field
from sjc3d.export.gltf import linear_to_srgb, read_glb
from sjc3d.export.writers import colored_mesh, write_mesh

VALIDATE_JS = """
const fs = require("fs");
const validator = require("gltf-validator");
const bytes = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(bytes).then(
  (report) => { console.log(JSON.stringify(report)); },
  (error) => { console.error(String(error)); process.exit(2); }
);
"""


@pytest.fixture(scope="session")
def gltf_validator() -> Path:
    """A folder whose node_modules holds gltf-validator, plus validate.js."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the glTF validator (not on PATH)")
    folder = Path(os.environ.get("SJC3D_NODE_CACHE", Path(tempfile.gettempdir()) / "sjc3d-gltf-validator"))
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "node_modules" / "gltf-validator" / "package.json").is_file():
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--prefix", str(folder), "gltf-validator"],
                capture_output=True, text=True, timeout=300,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install gltf-validator timed out (no registry access?)")
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"npm install gltf-validator failed: {last}")
    (folder / "validate.js").write_text(VALIDATE_JS)
    return folder


def validate(path: Path, folder: Path) -> dict:
    """The validator's report on `path`, asserting no errors and no warnings."""
    done = subprocess.run(
        ["node", str(folder / "validate.js"), str(path)], capture_output=True, text=True, timeout=120, cwd=folder
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    issues = report["issues"]
    assert issues["numErrors"] == 0, [m for m in issues["messages"] if m["severity"] == 0]
    assert issues["numWarnings"] == 0, [m for m in issues["messages"] if m["severity"] == 1]
    return report


def test_exported_glb_has_colours_and_passes_the_khronos_validator(tmp_path, gltf_validator):
    sphere = trimesh.creation.icosphere(3, radius=0.5)
    colors = np.random.default_rng(0).uniform(size=(len(sphere.vertices), 3))
    path = write_mesh(colored_mesh(sphere.vertices, sphere.faces, colors), tmp_path / "sphere.glb")

    _, arrays = read_glb(path.read_bytes())
    assert np.abs(linear_to_srgb(arrays["COLOR_0"]) - colors).max() <= 1 / 255  # stored linear

    report = validate(path, gltf_validator)
    assert report["info"]["totalVertexCount"] == len(sphere.vertices)
    assert report["info"]["totalTriangleCount"] == len(sphere.faces)
    attributes = glb_json(path)["meshes"][0]["primitives"][0]["attributes"]
    assert {"COLOR_0", "NORMAL"} <= attributes.keys()


def test_textured_glb_passes_the_khronos_validator(tmp_path, gltf_validator):
    pytest.importorskip("xatlas")
    from test_export import RampSphere

    mesh = export_field(RampSphere(), ExportConfig(resolution=32, max_faces=600, texture=True, texture_size=128)).mesh
    path = write_mesh(mesh, tmp_path / "textured.glb")
    report = validate(path, gltf_validator)
    assert report["info"]["totalTriangleCount"] == len(mesh.faces)
    assert report["info"]["materialCount"] == 1 and report["info"]["hasTextures"]
    gltf = glb_json(path)
    assert {"TEXCOORD_0", "NORMAL", "POSITION"} == gltf["meshes"][0]["primitives"][0]["attributes"].keys()
    assert gltf["images"][0]["mimeType"] == "image/png"


def glb_json(path: Path) -> dict:
    """The JSON chunk of a GLB file (12-byte header, then chunk length, type 'JSON', data)."""
    data = path.read_bytes()
    assert data[:4] == b"glTF"
    length = int.from_bytes(data[12:16], "little")
    assert data[16:20] == b"JSON"
    return json.loads(data[20 : 20 + length])
