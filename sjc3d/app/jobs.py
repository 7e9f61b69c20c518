"""The web app's work, without Gradio: prepare an input, sample views, run a fit, package the run.

Everything here is a thin layer over the library (`image.load_input_view`, `views.sample_views`,
`trainer.fit`, `export.export_command`, `turntable.render_command`); the Gradio page
(`sjc3d.app.layout`) only turns these plain values into widgets.  Keeping Gradio out of this
module lets the tests drive the app's jobs directly, from several threads, with no browser.

One `Engine` per server: it holds the model (loaded once), the device and the runs folder.  A
Zero-1-to-3 prior keeps its conditioning inside itself (`condition()`), so two jobs must never
use it at once: every job that touches the device takes `Engine.device_lock`.  Gradio's queue
already runs these events one at a time; the lock makes that a property of the engine rather
than of the page, and is what makes two fits submitted together run one after the other.
"""

from __future__ import annotations

import math
import queue
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, Optional

from sjc3d.config import CONFIGS_DIR, DEFAULT_MODEL, SHIPPED_MODEL, CameraConfig, Config, InputConfig, is_oracle, load_config
from sjc3d.errors import ConfigError, InputError, UserError

ORACLE_NOTE = "ignores the uploaded image: it fits the shipped toy object with a ground-truth prior"
PREVIEWS_PER_FIT = 4  # preview strips during a fit from the app, the final one included
UPDATE_INTERVAL = 0.25  # seconds between two progress updates sent to the page
ACCEPTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def one_line(error: BaseException) -> str:
    """A UserError as the CLI prints it: `error: <message>` on one line."""
    return "error: " + " ".join(str(error).split())


def default_model() -> str:
    """The shipped toy prior when it is present, else the public Zero-1-to-3 XL on the hub."""
    from sjc3d.priors import resolve_project_path

    return SHIPPED_MODEL if resolve_project_path(SHIPPED_MODEL).is_dir() else DEFAULT_MODEL


def model_label(source: str) -> str:
    """How the page names the model: the toy prior is said to be a small demo model."""
    if source == SHIPPED_MODEL:
        return (f"`{SHIPPED_MODEL}`: a small demo model trained by sjc3d on procedural shapes (64x64 views). "
                "Start the app with `--model` pointing at Zero-1-to-3 (hub id, folder or .ckpt) for real photos.")
    return f"`{source}`"


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    name: str
    description: str  # the preset file's first comment line
    oracle: bool  # the prior is the ground-truth oracle (no image, no model needed)
    steps: int  # its train.steps
    object_fraction: float  # its input.object_fraction: how large inputs are framed


def list_presets(configs: Path = CONFIGS_DIR) -> list[Preset]:
    """The presets in configs/, each with its own one-line description."""
    presets = []
    for path in sorted(configs.glob("*.yaml")):
        lines = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
        description = lines[0] if lines else ""
        config = load_config([str(path)])
        presets.append(Preset(path.stem, description, is_oracle(config.prior.source), config.train.steps,
                              config.input.object_fraction))
    return presets


def default_preset(presets: list[Preset], model: str) -> str:
    """learned-cpu (a latent fit with the toy prior) for the toy model, preview for Zero-1-to-3;
    the oracle's cpu-tiny when that preset is missing."""
    names = [p.name for p in presets]
    for name in ["learned-cpu" if model == SHIPPED_MODEL else "preview", "cpu-tiny"]:
        if name in names:
            return name
    return names[0]


# --------------------------------------------------------------------------- requests and results


@dataclass(frozen=True)
class ViewsRequest:
    """Novel views of the input, all from one target camera (Zero-1-to-3's live demo).

    Δpolar follows Zero-1-to-3: positive moves the camera *down* (DESIGN.md §4), so the target
    elevation is `input_elevation − polar_delta`.  `n_samples` views of that one camera differ
    only by their initial noise.
    """

    image: Path
    input_elevation: float = 0.0
    polar_delta: float = 0.0  # degrees
    azimuth_delta: float = 90.0  # degrees, + moves the camera to its right
    radius_delta: float = 0.0  # scene units
    guidance: float = 3.0
    steps: int = 50
    seed: int = 0
    n_samples: int = 4


@dataclass(frozen=True)
class FitRequest:
    image: Optional[Path]  # None for an oracle preset
    preset: str
    steps: int
    input_elevation: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Turntable:
    """The video rendered of every finished fit (`sjc3d render --video`)."""

    frames: int = 60
    resolution: int = 128
    elevation: float = 15.0


@dataclass
class RunFiles:
    """What a finished fit from the app leaves next to its run directory."""

    run_dir: Path
    glb: Path
    obj: Path
    ply: Path
    video: Path  # .mp4, or .gif where no mp4 writer is installed
    archive: Path  # <run_dir>.zip


@dataclass
class FitUpdate:
    """One message from a running fit to the page.

    `done` marks the last one: then exactly one of `files` (finished), `stopped` (cancelled,
    checkpoint kept) or `error` (one line) tells how it ended.
    """

    step: int
    total: int
    message: str
    loss: Optional[float] = None
    preview: Optional[Path] = None  # newest preview strip
    run_dir: Optional[Path] = None
    done: bool = False
    files: Optional[RunFiles] = None
    archive: Optional[Path] = None  # the run zipped (finished or cancelled runs)
    stopped: bool = False
    error: Optional[str] = None


@dataclass
class Job:
    """A fit the page has submitted; `stop` is set by Cancel (also while it waits in the queue)."""

    id: str
    stop: threading.Event = field(default_factory=threading.Event)


# --------------------------------------------------------------------------- pure helpers


def check_image(path: Optional[str | Path]) -> Path:
    """An uploaded file's path, refusing a missing one or a type the page does not take."""
    if path is None or str(path) == "":
        raise InputError("no input image: upload a PNG/JPEG/WebP or pick an example")
    path = Path(path)
    if path.suffix.lower() not in ACCEPTED_SUFFIXES:
        raise InputError(f"{path.name}: expected a PNG, JPEG or WebP image")
    return path


def load_view(path: Path, elevation: float, object_fraction: float = InputConfig.object_fraction):
    """`image.load_input_view` with the upload's temporary folder left out of its errors."""
    from sjc3d.image import load_input_view

    try:
        return load_input_view(path, InputConfig(elevation=elevation, object_fraction=object_fraction))
    except InputError as e:
        raise InputError(without_folder(e, path)) from None


def without_folder(error: BaseException, path: Optional[Path]) -> str:
    """The error's message on one line, naming an upload by its file name only."""
    message = " ".join(str(error).split())
    return message.replace(str(path), path.name) if path is not None else message


def target_elevation(request: ViewsRequest) -> float:
    """Elevation (deg) of the target camera; it must stay off the poles, where `up = +z` fails."""
    elevation = request.input_elevation - request.polar_delta
    if not -90.0 < elevation < 90.0:
        raise ConfigError(f"Δpolar {request.polar_delta:g}°: the camera would be at elevation {elevation:g}°, "
                          "outside (-90°, 90°)")
    return elevation


def check_views_request(request: ViewsRequest, radius: float) -> None:
    if request.steps < 1:
        raise ConfigError(f"steps {request.steps}: must be at least 1")
    if not 1 <= request.n_samples <= 16:
        raise ConfigError(f"samples {request.n_samples}: must be in [1, 16]")
    if not math.isfinite(request.guidance):
        raise ConfigError(f"guidance {request.guidance}: must be a finite number")
    if radius + request.radius_delta <= 0:
        raise ConfigError(f"Δradius {request.radius_delta:g}: the camera would be at radius "
                          f"{radius + request.radius_delta:g} <= 0")
    target_elevation(request)


def newest_preview(run_dir: Path) -> Optional[Path]:
    """The latest preview strip: step_NNNNNN.png sort by step, final.png comes last."""
    strips = sorted((run_dir / "previews").glob("*.png"), key=lambda p: (p.stem == "final", p.stem))
    return strips[-1] if strips else None


def zip_run(run_dir: Path) -> Path:
    """<run_dir>.zip beside the run (atomic), holding the folder under its own name.

    Checkpoints are stored as they are (they hardly compress); everything else is deflated.
    """
    from sjc3d.atomic import atomic_path

    archive = run_dir.with_name(run_dir.name + ".zip")
    with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
            method = zipfile.ZIP_STORED if path.suffix == ".pt" else zipfile.ZIP_DEFLATED
            zf.write(path, Path(run_dir.name) / path.relative_to(run_dir), compress_type=method)
    return archive


def export_run(run_dir: Path, turntable: Turntable = Turntable()) -> RunFiles:
    """Mesh (GLB/OBJ/PLY), turntable and zip of a finished run, all by the library's commands."""
    from sjc3d.export import export_command, write_mesh
    from sjc3d.turntable import render_command

    glb = run_dir / "mesh.glb"
    exported = export_command(run_dir=run_dir, mesh=glb)
    obj = write_mesh(exported.mesh, run_dir / "mesh.obj")
    ply = write_mesh(exported.mesh, run_dir / "mesh.ply")
    video = render_command(run_dir=run_dir, video=run_dir / "turntable.mp4", frames=turntable.frames,
                           elevation=turntable.elevation, resolution=turntable.resolution)[0]
    return RunFiles(run_dir, glb, obj, ply, video, zip_run(run_dir))


# --------------------------------------------------------------------------- the engine


class Engine:
    """The model, the device and the runs folder of one app server.

    model: what `--model` named (hub id, folder, .ckpt); loaded once, here, unless `prior` is
        given already loaded (tests).
    configs: the folder of the presets offered on the page.
    overrides: `key=value` applied to every fit after the page's settings (tests: small exports).
    """

    def __init__(self, model: str, runs: Path, device: str = "auto", prior=None, configs: Path = CONFIGS_DIR,
                 overrides: tuple[str, ...] = (), turntable: Turntable = Turntable()) -> None:
        from sjc3d.device import resolve_device
        from sjc3d.priors import resolve_project_path

        self.device = resolve_device(device, setting="--device")
        self.runs = Path(runs)
        local = resolve_project_path(model)
        # A run's config.yaml must name the model so that `export`/`render`/`--resume` find it
        # again from any folder: a local model is recorded by its absolute path.
        self.model = model
        self.model_source = str(local.resolve()) if local.exists() else model
        if prior is None:
            from sjc3d.config import PriorConfig
            from sjc3d.priors.zero123 import load_zero123

            prior = load_zero123(self.model_source, image_encoder=PriorConfig().image_encoder, device=self.device)
        self.prior = prior
        self.device_lock = threading.Lock()
        self.configs = Path(configs)
        self.presets = list_presets(self.configs)
        # Inputs are framed as the model's default preset frames them (the toy prior saw its
        # objects smaller than Zero-1-to-3's 200/256): the shown input, the views and the fit agree.
        self.object_fraction = self.preset(default_preset(self.presets, model)).object_fraction
        self.overrides = list(overrides)
        self.turntable = turntable
        self._jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()

    # ---- input

    def prepare(self, upload: Optional[str | Path]) -> Path:
        """Frame the uploaded image as the model will see it; returns the preprocessed PNG."""
        from sjc3d.image import save_png

        path = check_image(upload)
        view = load_view(path, 0.0, self.object_fraction)
        return save_png(self._scratch("inputs") / f"{path.stem}.png", view.rgb)

    # ---- novel views

    def views(self, request: ViewsRequest, progress: Optional[Callable[[int, int], None]] = None) -> list[Path]:
        """Sample `n_samples` views of one target camera; returns their PNGs (`sjc3d views` underneath).

        progress(done, total) is called after every DDIM step.
        """
        import torch

        from sjc3d.image import save_png
        from sjc3d.views import sample_views, target_poses, view_name

        radius = CameraConfig().radius
        check_views_request(request, radius)
        view = load_view(check_image(request.image), request.input_elevation, self.object_fraction)
        poses = target_poses([request.azimuth_delta] * request.n_samples, request.input_elevation,
                             -request.polar_delta, radius, request.radius_delta)
        done = 0

        def advance() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, request.steps)

        with self.device_lock:
            self.prior.condition(view.rgb, request.input_elevation, radius)
            images = sample_views(self.prior, poses, request.steps, request.guidance,
                                  torch.Generator().manual_seed(request.seed), progress=advance).cpu()
        out = self._scratch("views")
        stem = view_name(request.azimuth_delta, -request.polar_delta, request.radius_delta)
        return [save_png(out / f"{stem}_s{i}.png", image) for i, image in enumerate(images)]

    # ---- fits

    def submit(self) -> str:
        """Register a fit before it is queued, so that Cancel can reach it while it waits."""
        job = Job(uuid.uuid4().hex[:8])
        with self._jobs_lock:
            self._jobs[job.id] = job
        return job.id

    def cancel(self, job_id: Optional[str]) -> bool:
        """Ask a fit to stop after its current step (or not to start); False if there is none."""
        with self._jobs_lock:
            job = self._jobs.get(job_id or "")
        if job is None:
            return False
        job.stop.set()
        return True

    def preset(self, name: str) -> Preset:
        for preset in self.presets:
            if preset.name == name:
                return preset
        raise ConfigError(f"preset {name!r}: choose one of {', '.join(p.name for p in self.presets)}")

    def fit_config(self, request: FitRequest) -> Config:
        """The preset with the page's settings; a non-oracle preset fits with the loaded model."""
        preset = self.preset(request.preset)
        if request.steps < 1:
            raise ConfigError(f"steps {request.steps}: must be at least 1")
        overrides = {
            "train.steps": request.steps,
            "train.seed": request.seed,
            "train.device": str(self.device),
            "input.elevation": request.input_elevation,
            # Live previews are the point of the page: a few strips whatever the preset says.
            "train.preview_every": math.ceil(request.steps / PREVIEWS_PER_FIT),
        }
        if not preset.oracle:
            overrides["prior.source"] = self.model_source
        preset = str(self.configs / f"{request.preset}.yaml")
        return load_config([preset], [f"{k}={v}" for k, v in overrides.items()] + self.overrides)

    def fit(self, request: FitRequest, job_id: Optional[str] = None) -> Iterator[FitUpdate]:
        """Run a fit and stream its progress; the last update has `done=True`.

        The fit runs on a worker thread that holds the device lock; this generator only relays
        its messages, at most one every UPDATE_INTERVAL seconds (the newest step wins).  If the
        consumer goes away (the page closes the stream), the fit is asked to stop, which keeps
        its checkpoint and frees the device for the next job.
        """
        job = self._take_job(job_id)
        updates: queue.Queue = queue.Queue()
        worker = threading.Thread(target=self._fit_worker, args=(request, job, updates.put),
                                  name=f"sjc3d-fit-{job.id}", daemon=True)
        finished = False
        if self.device_lock.locked():
            yield FitUpdate(0, request.steps, "waiting for the job before this one to finish")
        worker.start()
        try:
            pending, last = None, 0.0
            while True:
                try:
                    item = updates.get(timeout=UPDATE_INTERVAL)
                except queue.Empty:
                    if pending is not None:
                        yield pending
                        pending, last = None, time.monotonic()
                    continue
                if isinstance(item, BaseException):  # a bug, not the user's: keep its traceback
                    finished = True
                    raise item
                if item.done:
                    finished = True
                    yield item
                    return
                pending = item
                if time.monotonic() - last >= UPDATE_INTERVAL:
                    yield pending
                    pending, last = None, time.monotonic()
        finally:
            if not finished:
                job.stop.set()
            with self._jobs_lock:
                self._jobs.pop(job.id, None)

    def _take_job(self, job_id: Optional[str]) -> Job:
        with self._jobs_lock:
            job = self._jobs.get(job_id or "")
            if job is None:
                job = Job(job_id or uuid.uuid4().hex[:8])
                self._jobs[job.id] = job
        return job

    def _fit_worker(self, request: FitRequest, job: Job, post: Callable[[object], None]) -> None:
        """Config → fit → export → turntable → zip, posting FitUpdates; the device lock held throughout."""
        from sjc3d.trainer import fit

        total = request.steps
        try:
            config = self.fit_config(request)
            image = None if is_oracle(config.prior.source) else check_image(request.image)
            if image is not None:
                load_view(image, request.input_elevation)  # a bad image is said now, not after the queue
            with self.device_lock:
                if job.stop.is_set():
                    post(FitUpdate(0, total, "cancelled before it started", done=True, stopped=True))
                    return
                run_dir = self._new_run_dir(image, config, job)
                post(FitUpdate(0, total, f"starting: {run_dir}", run_dir=run_dir))

                def on_step(step: int, stats: dict) -> None:
                    loss = float(stats.get("loss", math.nan))
                    post(FitUpdate(step, total, f"step {step}/{total}  loss {loss:.4g}", loss=loss,
                                   preview=newest_preview(run_dir), run_dir=run_dir))

                try:
                    result = fit(config, image, run_dir, progress=False,
                                 prior=None if image is None else self.prior, on_step=on_step, stop=job.stop)
                except InputError as e:  # the image, read by the fit
                    raise InputError(without_folder(e, image)) from None
                if result.stopped:
                    post(FitUpdate(result.step, total,
                                   f"cancelled at step {result.step}, checkpoint kept: continue with "
                                   f"`sjc3d fit --resume {run_dir}`",
                                   preview=newest_preview(run_dir), run_dir=run_dir, done=True, stopped=True,
                                   archive=zip_run(run_dir)))
                    return
                post(FitUpdate(total, total, "exporting the mesh and the turntable", preview=newest_preview(run_dir),
                               run_dir=run_dir))
                files = export_run(run_dir, self.turntable)
            post(FitUpdate(total, total, f"done: {total} steps in {result.wall_time:.0f} s; run directory {run_dir}",
                           loss=result.metrics.get("loss"), preview=newest_preview(run_dir), run_dir=run_dir,
                           done=True, files=files, archive=files.archive))
        except UserError as e:
            post(FitUpdate(0, total, one_line(e), done=True, error=one_line(e)))
        except BaseException as e:  # noqa: BLE001 — handed to the consumer, which re-raises it
            post(e)

    # ---- folders

    def _new_run_dir(self, image: Optional[Path], config: Config, job: Job) -> Path:
        """<runs>/<image stem or oracle mesh stem>/<time>-<job>: unique even for fits in the same second."""
        stem = image.stem if image is not None else Path(config.prior.source.split(":", 1)[-1]).stem
        return self.runs / stem / f"{datetime.now():%Y%m%d-%H%M%S}-{job.id}"

    def _scratch(self, kind: str) -> Path:
        """A fresh folder under <runs>/app/<kind>/ for one request's files."""
        path = self.runs / "app" / kind / f"{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        path.mkdir(parents=True, exist_ok=True)
        return path
