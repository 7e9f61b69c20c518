"""A minimal glTF 2.0 binary (GLB) writer: one mesh, one primitive, one unlit material.

sjc3d writes its own GLB (about a hundred lines) rather than trimesh's because every detail
below matters for a file that must look like the renders in any viewer:

Material
    The colours already contain the lighting the field learned (they reproduce the renders), so
    the material is unlit (`KHR_materials_unlit`): viewers show baseColor as it is. Viewers
    without the extension fall back to its pbrMetallicRoughness, set to a rough dielectric
    (metallic 0, roughness 1) — trimesh's files have no material, and glTF's default material is
    fully metallic, which most viewers render almost black.
Colour spaces (glTF 2.0 §3.9.2, §3.7.2.1)
    baseColorTexture is sRGB-encoded: the texture holds display colours and is stored as it
    is. COLOR_0 is *linear*: display colours are decoded with the sRGB transfer function
    before they are written (as float32, so dark colours keep their precision). A viewer
    re-encodes both the same way, so the textured and the vertex-coloured file look alike.
Texture coordinates
    TEXCOORD_0 has its origin at the image's top-left (v down); sjc3d's uv has v up (atlas.py),
    so v is written as 1 − v.
Buffers
    Indices (uint32) and each attribute get their own tightly packed bufferView, 4-byte
    aligned; the PNG is embedded in the binary chunk.
"""

from __future__ import annotations

import json
import struct
from typing import Optional

import numpy as np

_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_FLOAT, _UNSIGNED_INT = 5126, 5125
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071
UNLIT = "KHR_materials_unlit"


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB decoding function (IEC 61966-2-1), elementwise on values in [0, 1]."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """The sRGB encoding function, the inverse of `srgb_to_linear`."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


class _Binary:
    """The BIN chunk under construction, with the bufferViews and accessors that index it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, payload: bytes, target: Optional[int] = None) -> int:
        self.data.extend(b"\0" * (-len(self.data) % 4))  # every bufferView starts 4-byte aligned
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": len(payload)}
        if target is not None:
            view["target"] = target
        self.data.extend(payload)
        self.views.append(view)
        return len(self.views) - 1

    def accessor(self, array: np.ndarray, kind: str, target: int, bounds: bool = False) -> int:
        component = _UNSIGNED_INT if array.dtype == np.uint32 else _FLOAT
        accessor = {
            "bufferView": self.view(np.ascontiguousarray(array).tobytes(), target),
            "componentType": component,
            "count": int(len(array)),
            "type": kind,
        }
        if bounds:  # required for POSITION
            accessor["min"] = array.min(0).tolist()
            accessor["max"] = array.max(0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def glb_bytes(
    vertices: np.ndarray,
    faces: np.ndarray,
    normals: np.ndarray,
    colors: Optional[np.ndarray] = None,
    uv: Optional[np.ndarray] = None,
    texture_png: Optional[bytes] = None,
) -> bytes:
    """A complete GLB file.

    Args:
        vertices: [V, 3] positions (file axes); faces: [F, 3] indices, counter-clockwise outward.
        normals: [V, 3] unit vertex normals.
        colors: [V, 3] display (sRGB-encoded) colours in [0, 1] → linear COLOR_0; or None.
        uv: [V, 2] (v up) and texture_png: the PNG bytes of the baseColorTexture; or None.
    """
    binary = _Binary()
    attributes = {
        "POSITION": binary.accessor(vertices.astype(np.float32), "VEC3", _ARRAY_BUFFER, bounds=True),
        "NORMAL": binary.accessor(_unit(normals), "VEC3", _ARRAY_BUFFER),
    }
    pbr: dict = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
    gltf: dict = {"asset": {"version": "2.0", "generator": "sjc3d"}, "extensionsUsed": [UNLIT]}
    if colors is not None:
        linear = srgb_to_linear(colors).astype(np.float32)
        attributes["COLOR_0"] = binary.accessor(linear, "VEC3", _ARRAY_BUFFER)
    if uv is not None:
        if texture_png is None:
            raise ValueError("uv without a texture")
        flipped = np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1).astype(np.float32)
        attributes["TEXCOORD_0"] = binary.accessor(flipped, "VEC2", _ARRAY_BUFFER)
        gltf["images"] = [{"bufferView": binary.view(texture_png), "mimeType": "image/png"}]
        gltf["samplers"] = [
            {"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR, "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}
        ]
        gltf["textures"] = [{"sampler": 0, "source": 0}]
        pbr["baseColorTexture"] = {"index": 0}
    indices = binary.accessor(faces.astype(np.uint32).reshape(-1), "SCALAR", _ELEMENT_ARRAY_BUFFER)
    gltf.update(
        scene=0,
        scenes=[{"nodes": [0]}],
        nodes=[{"mesh": 0, "name": "sjc3d"}],
        meshes=[{"primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": 4}]}],
        materials=[{"pbrMetallicRoughness": pbr, "extensions": {UNLIT: {}}}],
        accessors=binary.accessors,
        bufferViews=binary.views,
        buffers=[{"byteLength": len(binary.data)}],
    )
    return _pack(json.dumps(gltf, separators=(",", ":")).encode(), bytes(binary.data))


def _unit(normals: np.ndarray) -> np.ndarray:
    """float32 normals renormalised in float32 (the validator checks |n| = 1 to ~1e-3)."""
    n = np.asarray(normals, dtype=np.float64)
    n = n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return n.astype(np.float32)


def _pack(json_chunk: bytes, bin_chunk: bytes) -> bytes:
    """GLB container: 12-byte header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
    json_chunk += b" " * (-len(json_chunk) % 4)
    bin_chunk += b"\0" * (-len(bin_chunk) % 4)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join(
        [
            struct.pack("<4sII", b"glTF", 2, total),
            struct.pack("<I4s", len(json_chunk), b"JSON"),
            json_chunk,
            struct.pack("<I4s", len(bin_chunk), b"BIN\0"),
            bin_chunk,
        ]
    )


def read_glb(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON, arrays) of a GLB as `glb_bytes` writes it: the first primitive's attributes by
    name ("POSITION", "NORMAL", "COLOR_0", "TEXCOORD_0") and "indices" [F, 3].

    A reader of the file exactly as stored (linear COLOR_0, v-down TEXCOORD_0), for tests and
    benchmarks; trimesh's loader drops COLOR_0 when the primitive has a material.
    """
    magic, _, _ = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF":
        raise ValueError("not a GLB file")
    json_length, _ = struct.unpack_from("<I4s", data, 12)
    gltf = json.loads(data[20 : 20 + json_length])
    bin_start = 20 + json_length + 8
    sizes = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
    dtypes = {_FLOAT: np.float32, _UNSIGNED_INT: np.uint32}

    def accessor(index: int) -> np.ndarray:
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        start = bin_start + view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        array = np.frombuffer(data, dtype=dtypes[acc["componentType"]], count=acc["count"] * sizes[acc["type"]], offset=start)
        return array.reshape(acc["count"], sizes[acc["type"]]) if sizes[acc["type"]] > 1 else array

    primitive = gltf["meshes"][0]["primitives"][0]
    arrays = {name: accessor(index) for name, index in primitive["attributes"].items()}
    arrays["indices"] = accessor(primitive["indices"]).reshape(-1, 3)
    return gltf, arrays


def glb_image(data: bytes, gltf: dict) -> bytes:
    """The bytes of the GLB's first image (its PNG texture)."""
    json_length = struct.unpack_from("<I", data, 12)[0]
    view = gltf["bufferViews"][gltf["images"][0]["bufferView"]]
    start = 20 + json_length + 8 + view.get("byteOffset", 0)
    return data[start : start + view["byteLength"]]
