"""Geometry and image metrics — the one implementation `sjc3d eval` and the benchmarks share.

Conventions
    Chamfer distance  the symmetric *mean* of non-squared nearest-neighbour distances between
                      surface samples: CD = ½·(mean_{p∈A} d(p, B) + mean_{q∈B} d(q, A)), in the
                      meshes' units (after `normalize_to_unit`, fractions of the longest side).
    F-score           at distance τ: precision = share of A's samples within τ of B's samples,
                      recall = the same from B to A, F = 2PR/(P + R).
    Normal consistency  the mean |cos| between the face normal at each sample and the face normal
                      at its nearest sample on the other mesh, averaged over both directions
                      (as in Occupancy Networks; 1 = parallel everywhere). Sign-free, so a
                      flipped face costs nothing; what it measures is the facets and bumps a
                      noisy surface has and the truth has not.
    Volume IoU        occupancy of voxel centres of a `resolution`³ grid over the union of the
                      two bounding boxes; inside/outside by ray parity along each of the three
                      axes, the majority of the three votes wins (robust to small holes and to a
                      ray grazing an edge).
    Sampling          area-uniform surface samples from a seeded generator; the same seed for
                      both meshes, so a mesh compared with itself gives exactly 0 and 1.

The library functions compare meshes as they are given (no alignment); `evaluate_meshes` (and
`sjc3d eval`) first normalises each mesh with `normalize_to_unit`: scale and translation are
factored out, rotation is not searched, so both files must share their axes (sjc3d writes
y-up files facing +z, like the ground-truth meshes in shared/data).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from sjc3d.errors import InputError

DEFAULT_POINTS = 100_000
DEFAULT_SEED = 0
_MAX_PAIRS = 1 << 22  # (triangle, grid column) pairs tested at once in `occupancy_grid`


# --------------------------------------------------------------------------- meshes


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """A mesh file (any format trimesh reads; scenes are concatenated) as it is stored."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mesh {path} does not exist")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises assorted errors for unreadable files
        raise InputError(f"cannot read mesh {path} ({type(e).__name__})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(f"{path} holds no triangle mesh")
    if mesh.area <= 0:
        raise InputError(f"mesh {path} has zero surface area")
    return mesh


def unit_transform(mesh: trimesh.Trimesh) -> np.ndarray:
    """[4, 4] similarity that centres the bounding box at the origin and scales its longest side to 1."""
    lo, hi = mesh.bounds
    scale = 1.0 / float((hi - lo).max())
    matrix = np.eye(4) * scale
    matrix[3, 3] = 1.0
    matrix[:3, 3] = -scale * (lo + hi) / 2
    return matrix


def normalize_to_unit(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of `mesh`, bounding box centred at the origin, longest side 1."""
    out = mesh.copy()
    out.apply_transform(unit_transform(mesh))
    return out


def surface_samples(mesh: trimesh.Trimesh, n_points: int = DEFAULT_POINTS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[n, 3] area-uniform points on the surface, reproducible for a given seed."""
    return oriented_samples(mesh, n_points, seed)[0]


def oriented_samples(
    mesh: trimesh.Trimesh, n_points: int = DEFAULT_POINTS, seed: int = DEFAULT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """(points [n, 3], unit face normals [n, 3]) of area-uniform surface samples (seeded)."""
    points, face = trimesh.sample.sample_surface(mesh, int(n_points), seed=seed)
    return np.asarray(points), np.asarray(mesh.face_normals)[face]


# --------------------------------------------------------------------------- surface distances


def _nearest(a_points: np.ndarray, b_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance of each A point to B, distance of each B point to A)."""
    (d_ab, _), (d_ba, _) = _nearest_indexed(a_points, b_points)
    return d_ab, d_ba


def _nearest_indexed(a_points: np.ndarray, b_points: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """((distance, index of the nearest B point) for each A point, the same from B to A)."""
    # One worker: the machines running this are shared, and thread fan-out there costs more
    # than it saves. (Queries are slow only when the surfaces are far apart: each query then
    # searches a large disc of the other surface's samples.)
    return cKDTree(b_points).query(a_points), cKDTree(a_points).query(b_points)


def chamfer_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, n_points: int = DEFAULT_POINTS, seed: int = DEFAULT_SEED) -> float:
    """Symmetric mean of non-squared nearest-neighbour distances (module docstring)."""
    d_ab, d_ba = _nearest(surface_samples(a, n_points, seed), surface_samples(b, n_points, seed))
    return 0.5 * (float(d_ab.mean()) + float(d_ba.mean()))


@dataclass
class FScore:
    f_score: float
    precision: float  # share of A's samples within τ of B
    recall: float  # share of B's samples within τ of A


def _f_from_distances(d_ab: np.ndarray, d_ba: np.ndarray, threshold: float) -> FScore:
    precision = float((d_ab < threshold).mean())
    recall = float((d_ba < threshold).mean())
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return FScore(f, precision, recall)


def f_score(
    a: trimesh.Trimesh, b: trimesh.Trimesh, threshold: float, n_points: int = DEFAULT_POINTS, seed: int = DEFAULT_SEED
) -> float:
    """F-score of A (prediction) against B (truth) at distance `threshold`."""
    d_ab, d_ba = _nearest(surface_samples(a, n_points, seed), surface_samples(b, n_points, seed))
    return _f_from_distances(d_ab, d_ba, threshold).f_score


def _consistency(n_a: np.ndarray, n_b: np.ndarray, ab: np.ndarray, ba: np.ndarray) -> float:
    """Mean |cos| between each sample's normal and its nearest neighbour's, both directions."""
    cos_ab = np.abs((n_a * n_b[ab]).sum(1))
    cos_ba = np.abs((n_b * n_a[ba]).sum(1))
    return 0.5 * (float(cos_ab.mean()) + float(cos_ba.mean()))


def normal_consistency(
    a: trimesh.Trimesh, b: trimesh.Trimesh, n_points: int = DEFAULT_POINTS, seed: int = DEFAULT_SEED
) -> float:
    """Normal consistency of A and B (module docstring), in [0, 1]."""
    (p_a, n_a), (p_b, n_b) = oriented_samples(a, n_points, seed), oriented_samples(b, n_points, seed)
    (_, ab), (_, ba) = _nearest_indexed(p_a, p_b)
    return _consistency(n_a, n_b, ab, ba)


# --------------------------------------------------------------------------- volume


def _parity_along(triangles: np.ndarray, axis: int, centres: list[np.ndarray]) -> np.ndarray:
    """Inside test by ray parity: rays parallel to `axis` through every grid column.

    Args:
        triangles: [F, 3, 3] vertices.
        centres: per-axis voxel-centre coordinates (lengths n0, n1, n2).
    Returns:
        [n0, n1, n2] bool, True where an odd number of crossings lie before the voxel centre.
    """
    u_axis, v_axis = [k for k in range(3) if k != axis]
    us, vs, ws = centres[u_axis], centres[v_axis], centres[axis]
    du, dv = us[1] - us[0] if len(us) > 1 else 1.0, vs[1] - vs[0] if len(vs) > 1 else 1.0
    # A ray exactly through a shared edge would be counted twice: shift the rays by an
    # irrational fraction of a cell, so that no axis-aligned or diagonal edge is hit exactly.
    us, vs = us + du * 1.3e-4 * math.sqrt(2), vs + dv * 1.7e-4 * math.sqrt(3)
    p = triangles[:, :, [u_axis, v_axis]]  # [F, 3, 2]
    w = triangles[:, :, axis]  # [F, 3]
    area2 = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    lo_u = np.ceil((p[:, :, 0].min(1) - us[0]) / du).astype(np.int64).clip(0, len(us))
    hi_u = np.floor((p[:, :, 0].max(1) - us[0]) / du).astype(np.int64).clip(-1, len(us) - 1)
    lo_v = np.ceil((p[:, :, 1].min(1) - vs[0]) / dv).astype(np.int64).clip(0, len(vs))
    hi_v = np.floor((p[:, :, 1].max(1) - vs[0]) / dv).astype(np.int64).clip(-1, len(vs) - 1)
    n_u, n_v = (hi_u - lo_u + 1).clip(0), (hi_v - lo_v + 1).clip(0)
    count = n_u * n_v
    keep = np.nonzero((count > 0) & (np.abs(area2) > 1e-18))[0]
    # flips[column, k] = crossings whose w lies between ws[k-1] and ws[k]: parity is its cumsum.
    flips = np.zeros((len(us) * len(vs), len(ws) + 1), dtype=np.int32)
    bounds = np.cumsum(count[keep])
    start = 0
    while start < len(keep):
        base = bounds[start - 1] if start > 0 else 0
        stop = max(int(np.searchsorted(bounds, base + _MAX_PAIRS, side="right")), start + 1)
        f = keep[start:stop]
        n = count[f]
        owner = np.repeat(np.arange(len(f)), n)
        offset = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        iu = lo_u[f][owner] + offset % n_u[f][owner]
        iv = lo_v[f][owner] + offset // n_u[f][owner]
        q = np.stack([us[iu], vs[iv]], -1)
        a, b, c = p[f, 0][owner], p[f, 1][owner], p[f, 2][owner]

        def edge(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
            return (y[:, 0] - x[:, 0]) * (z[:, 1] - x[:, 1]) - (z[:, 0] - x[:, 0]) * (y[:, 1] - x[:, 1])

        total = area2[f][owner]
        b0, b1, b2 = edge(b, c, q) / total, edge(c, a, q) / total, edge(a, b, q) / total
        hit = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
        tri_w = w[f][owner][hit]
        depth = b0[hit] * tri_w[:, 0] + b1[hit] * tri_w[:, 1] + b2[hit] * tri_w[:, 2]
        column = iu[hit] * len(vs) + iv[hit]
        np.add.at(flips, (column, np.searchsorted(ws, depth)), 1)
        start = stop
    parity = (np.cumsum(flips[:, :-1], axis=1) % 2).astype(bool)  # [n_u·n_v, n_w]
    parity = parity.reshape(len(us), len(vs), len(ws))
    # Axes of `parity` are (u, v, w); put them back in (0, 1, 2) order.
    return np.moveaxis(parity, [0, 1, 2], [u_axis, v_axis, axis])


def occupancy_grid(mesh: trimesh.Trimesh, lo: np.ndarray, hi: np.ndarray, resolution: int) -> np.ndarray:
    """[R, R, R] bool: which voxel centres of the box [lo, hi] lie inside `mesh` (3-axis vote)."""
    centres = [lo[k] + (np.arange(resolution) + 0.5) * (hi[k] - lo[k]) / resolution for k in range(3)]
    triangles = np.asarray(mesh.triangles, dtype=np.float64)
    votes = sum(_parity_along(triangles, axis, centres).astype(np.int8) for axis in range(3))
    return votes >= 2


def volume_iou(a: trimesh.Trimesh, b: trimesh.Trimesh, resolution: int = 64) -> float:
    """Intersection over union of the two solids on a `resolution`³ grid over their union box."""
    lo = np.minimum(a.bounds[0], b.bounds[0])
    hi = np.maximum(a.bounds[1], b.bounds[1])
    hi = np.maximum(hi, lo + 1e-9)  # a flat mesh still gets a grid
    occ_a = occupancy_grid(a, lo, hi, resolution)
    occ_b = occupancy_grid(b, lo, hi, resolution)
    union = np.count_nonzero(occ_a | occ_b)
    return 1.0 if union == 0 else float(np.count_nonzero(occ_a & occ_b) / union)


# --------------------------------------------------------------------------- images


def psnr(a, b, max_value: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two equally shaped images (arrays or tensors); inf if equal."""
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr of images of different shapes {a.shape} and {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(max_value**2 / mse)


def ssim_map(a, b, max_value: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity (Wang et al. 2004) per window of two images [H, W, C]: [H − 2r, W − 2r],
    the mean over channels of the index of the Gaussian window centred on each pixel far enough from
    the border (r = 5 for σ = 1.5).

    The standard form: Gaussian window σ = 1.5 (truncated at 3.5σ, 11 taps), K1 = 0.01, K2 = 0.03,
    statistics per channel, 'valid' borders (no padding).
    """
    from scipy.ndimage import gaussian_filter

    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim of images of different shapes {a.shape} and {b.shape}")
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    radius = ssim_radius(sigma)

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=(sigma, sigma, 0), truncate=3.5)[radius:-radius, radius:-radius]

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return index.mean(-1)


def ssim_radius(sigma: float = 1.5) -> int:
    """Half-width of the SSIM window (its Gaussian truncated at 3.5σ): the border `ssim_map` drops."""
    return int(3.5 * sigma + 0.5)


def ssim(a, b, max_value: float = 1.0, sigma: float = 1.5) -> float:
    """Structural similarity of two images [H, W, C], mean over windows and channels (`ssim_map`)."""
    return float(ssim_map(a, b, max_value, sigma).mean())


# --------------------------------------------------------------------------- evaluation


@dataclass
class MeshMetrics:
    chamfer: float
    iou: float
    f_score: float
    precision: float
    recall: float
    fscore_threshold: float
    n_points: int
    resolution: int
    normal_consistency: float = float("nan")


def evaluate_meshes(
    pred: trimesh.Trimesh,
    gt: trimesh.Trimesh,
    fscore_threshold: float = 0.02,
    n_points: int = DEFAULT_POINTS,
    resolution: int = 64,
    seed: int = DEFAULT_SEED,
) -> MeshMetrics:
    """All geometry metrics of `pred` against `gt`, each first normalised to unit size."""
    pred, gt = normalize_to_unit(pred), normalize_to_unit(gt)
    (p_a, n_a), (p_b, n_b) = oriented_samples(pred, n_points, seed), oriented_samples(gt, n_points, seed)
    (d_ab, ab), (d_ba, ba) = _nearest_indexed(p_a, p_b)
    fs = _f_from_distances(d_ab, d_ba, fscore_threshold)
    return MeshMetrics(
        chamfer=0.5 * (float(d_ab.mean()) + float(d_ba.mean())),
        iou=volume_iou(pred, gt, resolution),
        f_score=fs.f_score,
        precision=fs.precision,
        recall=fs.recall,
        fscore_threshold=fscore_threshold,
        n_points=n_points,
        resolution=resolution,
        normal_consistency=_consistency(n_a, n_b, ab, ba),
    )


def eval_command(mesh: Path, gt: Path, fscore_threshold: float = 0.02, json_out: Optional[Path] = None) -> MeshMetrics:
    """`sjc3d eval`: a table on stdout, then the metrics as one JSON line (last line of stdout)."""
    from rich.console import Console
    from rich.table import Table

    from sjc3d.atomic import atomic_write_text
    from sjc3d.errors import ConfigError

    if not fscore_threshold > 0:
        raise ConfigError(f"--fscore-threshold {fscore_threshold}: must be positive")
    metrics = evaluate_meshes(load_mesh(mesh), load_mesh(gt), fscore_threshold)
    record = {"mesh": str(mesh), "gt": str(gt), **asdict(metrics)}

    table = Table(title=f"{mesh} vs {gt} (both normalised to unit size)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("Chamfer (mean L2, lower is better)", f"{metrics.chamfer:.5f}")
    table.add_row(f"volume IoU ({metrics.resolution}^3)", f"{metrics.iou:.4f}")
    table.add_row(f"F-score @ {fscore_threshold:g}", f"{metrics.f_score:.4f}")
    table.add_row("precision / recall", f"{metrics.precision:.4f} / {metrics.recall:.4f}")
    table.add_row("normal consistency (1 = best)", f"{metrics.normal_consistency:.4f}")
    Console(highlight=False).print(table)
    text = json.dumps(record)
    print(text)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(record, indent=2) + "\n")
    return metrics
