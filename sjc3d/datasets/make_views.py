"""`sjc3d make-views`: procedural objects rendered into the Zero-1-to-3 layout.

OUT/dataset.json                 generator, version, seed, split, counts, size, camera distribution
OUT/<split>_<k:06d>/000.png ...  RGBA views (sjc3d/datasets/raytrace.py)
OUT/<split>_<k:06d>/000.npy ...  3×4 world-to-camera [R | t] (sjc3d/datasets/zero123_layout.py)
OUT/<split>_<k:06d>/object.json  the object's description: `load_object(folder)` rebuilds it

Reproducibility: object k of a split, and its cameras, are a pure function of (seed, split, k) —
numpy SeedSequence(seed, spawn_key=(split, k, stream)) — so a dataset can be regenerated or
extended, and the "test" split draws from streams the "train" split never touches.

Cameras follow Zero-1-to-3's rendering script: radius uniform in [1.5, 2.2], FoV 49.1°, looking
at the origin with up = +z.  Directions are uniform on the sphere (the script normalises a
uniform vector of the cube, which favours the cube's corners slightly); elevations are kept
within ±89.9° (sjc3d.cameras), where look-at is defined.

Writing is atomic per object and resumable: an object is rendered into a hidden staging folder
(`.<id>.partial`, skipped by readers) that is renamed into place once every file is on disk, so
an object folder is complete and is skipped when the command runs again.  dataset.json guards
against resuming with other settings.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sjc3d.datasets.raytrace import FOV_DEG, SUPERSAMPLE, render_views
from sjc3d.datasets.shapes import ProceduralObject, sample_object
from sjc3d.datasets.zero123_layout import write_view
from sjc3d.errors import ConfigError, InputError

GENERATOR = "sjc3d.datasets.make_views"
GENERATOR_VERSION = 1  # bump when objects or cameras for a given seed change
SPLITS = ("train", "test")
RADIUS_RANGE = (1.5, 2.2)
OBJECT_FILE = "object.json"
DATASET_FILE = "dataset.json"
_OBJECT_STREAM, _CAMERA_STREAM = 0, 1


@dataclass(frozen=True)
class ViewsSpec:
    """Everything that determines a dataset's content (recorded in dataset.json)."""

    seed: int = 0
    split: str = "train"
    n_views: int = 12
    size: int = 64
    supersample: int = SUPERSAMPLE

    def check(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(f"--split {self.split!r}: expected one of {', '.join(SPLITS)}")
        if self.n_views < 1 or self.size < 8 or self.supersample < 1 or self.seed < 0:
            raise ConfigError(f"need --views >= 1, --size >= 8, --supersample >= 1 and --seed >= 0, got {self}")


def object_id(split: str, index: int) -> str:
    return f"{split}_{index:06d}"


def _rng(spec: ViewsSpec, index: int, stream: int) -> np.random.Generator:
    key = (SPLITS.index(spec.split), index, stream)
    return np.random.default_rng(np.random.SeedSequence(spec.seed, spawn_key=key))


def procedural_object(spec: ViewsSpec, index: int) -> ProceduralObject:
    """Object `index` of the dataset `spec` (a pure function of seed, split and index)."""
    return sample_object(_rng(spec, index, _OBJECT_STREAM))


def sample_cameras(rng: np.random.Generator, n: int, radius_range: tuple[float, float] = RADIUS_RANGE) -> Tensor:
    """[n, 4, 4] camera-to-world: directions uniform on the sphere, radius uniform, looking at the origin."""
    from sjc3d.cameras import spherical_to_c2w

    z = rng.uniform(-1.0, 1.0, n)  # uniform z and azimuth = uniform on the sphere (Archimedes)
    azimuth = rng.uniform(0.0, 360.0, n)
    radius = rng.uniform(*radius_range, n)
    elevation = np.degrees(np.arcsin(z))
    return spherical_to_c2w(torch.from_numpy(elevation).float(), torch.from_numpy(azimuth).float(),
                            torch.from_numpy(radius).float())


def object_cameras(spec: ViewsSpec, index: int) -> Tensor:
    """The [n_views, 4, 4] cameras of object `index` (a pure function of seed, split and index)."""
    return sample_cameras(_rng(spec, index, _CAMERA_STREAM), spec.n_views)


def load_object(folder: str | Path) -> ProceduralObject:
    """The object described by FOLDER/object.json (e.g. to rebuild a held-out object's truth mesh)."""
    path = Path(folder) / OBJECT_FILE
    try:
        return ProceduralObject.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist: not an object folder written by make-views") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is not a valid object description ({e})") from None


# --------------------------------------------------------------------------- writing


def is_complete(out: Path, spec: ViewsSpec, index: int) -> bool:
    """Whether an earlier run wrote object `index` (and nobody has deleted any of its files since)."""
    folder = out / object_id(spec.split, index)
    views = (folder / f"{v:03d}{ext}" for v in range(spec.n_views) for ext in (".png", ".npy"))
    return (folder / OBJECT_FILE).is_file() and all(path.is_file() for path in views)


def _flush_to_disk(folder: Path) -> None:
    """Make every file in `folder` durable before the folder is renamed into place.

    One sync(2) commits all of them at once; an fsync per file costs a disk flush each (25 for
    an object of 12 views, which doubled the time make-views takes; README "Training data").
    """
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in folder.iterdir():  # no sync(2) (Windows): one file at a time
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


def write_object(out: Path, spec: ViewsSpec, index: int) -> None:
    """Render object `index` into a hidden staging folder, then rename that into place.

    Readers skip hidden folders, so they see a whole object or none: a run killed half-way
    leaves only the staging folder, which the next run replaces.  Files reach the disk before
    the rename, so a power loss cannot leave a named folder with empty files either.
    """
    import shutil

    from sjc3d.atomic import PARTIAL, reporting_write_errors

    obj, c2w = procedural_object(spec, index), object_cameras(spec, index)
    rgba = render_views(obj, c2w, spec.size, FOV_DEG, spec.supersample)
    final = out / object_id(spec.split, index)
    staging = out / f".{final.name}{PARTIAL}"
    with reporting_write_errors(staging):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for v in range(spec.n_views):
            write_view(staging, v, rgba[v], c2w[v])
        (staging / OBJECT_FILE).write_text(json.dumps(obj.to_dict(), indent=1) + "\n")
        _flush_to_disk(staging)
    with reporting_write_errors(final):
        if final.exists():  # an object that lost files since it was written
            shutil.rmtree(final)
        os.replace(staging, final)  # should a power loss undo the rename, the object is rendered again


def _dataset_record(spec: ViewsSpec, n_objects: int) -> dict:
    from sjc3d import __version__

    return {
        "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "sjc3d_version": __version__,
        **asdict(spec), "n_objects": n_objects, "layout": "zero123: <object>/NNN.png (RGBA) + NNN.npy (3x4 w2c [R|t])",
        "camera": {"fov_deg": FOV_DEG, "radius_range": list(RADIUS_RANGE), "look_at": "origin", "up": "+z",
                   "direction": "uniform on the sphere", "axes": "OpenGL (Blender)"},
        "object": {"normalisation": "bounding box centred at the origin, longest side 1", "world": "z up"},
    }


def _prepare(out: Path, spec: ViewsSpec, n_objects: int) -> None:
    """Create OUT/dataset.json, or check that an existing dataset was made with the same settings."""
    from sjc3d.atomic import atomic_write_text

    path = out / DATASET_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise InputError(f"{path} is not valid JSON: use another folder") from None
        expected = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, **asdict(spec)}
        different = [k for k, v in expected.items() if old.get(k) != v]
        if different:
            was = ", ".join(f"{k}={old.get(k)!r}" for k in different)
            raise InputError(f"{out} holds a dataset made with {was}: give the same settings or another folder")
        n_objects = max(n_objects, int(old.get("n_objects", 0)))
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no {DATASET_FILE}: give a new or empty folder")
    atomic_write_text(path, json.dumps(_dataset_record(spec, n_objects), indent=1) + "\n")


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core: no intra-op threads on top


def _write_task(args: tuple[Path, ViewsSpec, int]) -> None:
    write_object(*args)


@dataclass
class MakeViewsReport:
    n_written: int
    n_skipped: int
    seconds: float
    views_per_second: float


def make_views(out: str | Path, n_objects: int, n_views: int = 12, size: int = 64, seed: int = 0,
               split: str = "train", supersample: int = SUPERSAMPLE, workers: int = 1,
               progress: bool = True) -> MakeViewsReport:
    """Write objects 0 … n_objects − 1 of (seed, split) under `out`, skipping complete ones."""
    from sjc3d.progress import ProgressBar

    spec = ViewsSpec(seed=seed, split=split, n_views=n_views, size=size, supersample=supersample)
    spec.check()
    if n_objects < 1 or workers < 1:
        raise ConfigError(f"need --objects >= 1 and --workers >= 1, got {n_objects} and {workers}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder")
    _prepare(out, spec, n_objects)
    tasks = [(out, spec, k) for k in range(n_objects) if not is_complete(out, spec, k)]
    bar = ProgressBar(n_objects, "make-views", start=n_objects - len(tasks), log_every=max(1, n_objects // 20),
                      enabled=progress)
    start = time.perf_counter()
    if workers == 1 or len(tasks) <= 1:
        threads = torch.get_num_threads()
        _worker_init()
        try:
            for task in tasks:
                _write_task(task)
                bar.advance()
        finally:
            torch.set_num_threads(threads)
    else:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_worker_init) as pool:
            for _ in pool.imap_unordered(_write_task, tasks, chunksize=max(1, min(16, len(tasks) // (4 * workers)))):
                bar.advance()
    bar.close()
    seconds = time.perf_counter() - start
    written = len(tasks)
    rate = written * spec.n_views / seconds if written and seconds > 0 else math.nan
    return MakeViewsReport(written, n_objects - written, seconds, rate)


def make_views_command(out: Path, n_objects: int, n_views: int, size: int, seed: int, split: str,
                       supersample: int, workers: int) -> MakeViewsReport:
    """`sjc3d make-views`: write the dataset, then one summary line."""
    report = make_views(out, n_objects, n_views, size, seed, split, supersample, workers)
    rate = "" if math.isnan(report.views_per_second) else f", {report.views_per_second:.1f} views/s"
    print(f"{out}: {report.n_written} objects written, {report.n_skipped} already complete "
          f"({n_views} views of {size}x{size} each; {report.seconds:.1f} s{rate})")
    return report
