"""The `sjc3d` command line.

Only Typer and the standard library are imported at module level: every command imports its
implementation (and so torch) when it runs, so `sjc3d --help` and `sjc3d --version` are instant.
A `UserError` becomes one line on stderr and its exit code; nothing else is caught.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from sjc3d import __version__
from sjc3d.config import InputConfig

app = typer.Typer(
    name="sjc3d",
    help="One photo of an object in, a coloured 3D mesh out (Zero-1-to-3 + Score Jacobian Chaining).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PRESETS_HELP = "Preset YAML file or name in configs/ (repeatable, merged in order)."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sjc3d {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """sjc3d: image-to-3D with Zero-1-to-3 and Score Jacobian Chaining."""


def guarded(run: Callable[[], object]) -> None:
    """Run a command body; a UserError becomes `error: <one line>` and its exit code.

    (`stopped: <one line>` for a preempted job, whose checkpoint is written: see preemption.py.)
    """
    from sjc3d.errors import UserError

    try:
        run()
    except UserError as e:
        message = " ".join(str(e).split())
        typer.echo(f"{getattr(e, 'label', 'error')}: {message}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


def split_positionals(args: Optional[List[str]], what: str) -> tuple[Optional[str], list[str]]:
    """Separate `key=value` overrides from at most one positional path (image or run dir)."""
    from sjc3d.errors import ConfigError

    overrides = [a for a in args or [] if "=" in a and not Path(a).exists()]
    paths = [a for a in args or [] if a not in overrides]
    if len(paths) > 1:
        raise ConfigError(f"expected one {what}, got {len(paths)}: {' '.join(paths)}")
    return (paths[0] if paths else None), overrides


@app.command("config")
def config_cmd(
    args: Optional[List[str]] = typer.Argument(None, help="key=value overrides."),
    presets: List[str] = typer.Option([], "-c", "--config", help=PRESETS_HELP),
) -> None:
    """Print the resolved configuration (defaults ← presets ← overrides) as YAML."""

    def run() -> None:
        from sjc3d.config import dump_config, load_config

        path, overrides = split_positionals(args, "override")
        if path is not None:
            from sjc3d.errors import ConfigError

            raise ConfigError(f"{path!r} is not of the form key=value")
        typer.echo(dump_config(load_config(presets, overrides)), nl=False)

    guarded(run)


@app.command("fit")
def fit_cmd(
    args: Optional[List[str]] = typer.Argument(None, help="IMAGE (RGBA png) and key=value overrides."),
    presets: List[str] = typer.Option([], "-c", "--config", help=PRESETS_HELP),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (train.steps)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default outputs/<stem>/<time>)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    prior: Optional[str] = typer.Option(None, "--model", "--prior", help="Model: hub id, folder, .ckpt or oracle:MESH (prior.source)."),
    elevation: Optional[float] = typer.Option(None, "--elevation", help="Elevation of the input view (deg)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default auto)."),
) -> None:
    """Fit a 3D field to one image; writes a run directory."""

    def run() -> None:
        from sjc3d.trainer import fit_command

        image, overrides = split_positionals(args, "image")
        flags = {"train.steps": steps, "prior.source": prior, "input.elevation": elevation, "train.device": device}
        overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
        fit_command(image=image, presets=presets, overrides=overrides, out=out, resume=resume)

    guarded(run)


@app.command("export")
def export_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="Run directory (default: newest under outputs/)."),
    mesh: Path = typer.Option(..., "--mesh", help="Output mesh: .glb, .obj or .ply."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Marching-cubes grid (default 256)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Density iso-level (default auto)."),
    max_faces: Optional[int] = typer.Option(None, "--max-faces", help="Decimate to this many faces."),
    smooth: Optional[int] = typer.Option(None, "--smooth", help="Taubin smoothing iterations."),
    texture: Optional[bool] = typer.Option(None, "--texture/--no-texture",
                                           help="Baked UV texture (.glb/.obj) or vertex colours."),
    texture_size: Optional[int] = typer.Option(None, "--texture-size", help="Texture side (default 1024)."),
) -> None:
    """Export a coloured mesh from a run."""

    def run() -> None:
        from sjc3d.export import export_command

        export_command(run_dir=run_dir, mesh=mesh, resolution=resolution, threshold=threshold,
                       max_faces=max_faces, smooth=smooth, texture=texture, texture_size=texture_size)

    guarded(run)


@app.command("render")
def render_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="Run directory (default: newest under outputs/)."),
    video: Optional[Path] = typer.Option(None, "--video", help="Turntable video (.mp4 or .gif)."),
    grid: Optional[Path] = typer.Option(None, "--grid", help="Grid PNG of views."),
    frames: int = typer.Option(120, "--frames", help="Frames in the turntable."),
    elevation: float = typer.Option(15.0, "--elevation", help="Camera elevation (deg)."),
    resolution: int = typer.Option(128, "--resolution", help="Rendered image side (pixels)."),
) -> None:
    """Render a turntable video and/or a grid of views of a run."""

    def run() -> None:
        from sjc3d.turntable import render_command

        render_command(run_dir=run_dir, video=video, grid=grid, frames=frames, elevation=elevation,
                       resolution=resolution)

    guarded(run)


@app.command("eval")
def eval_cmd(
    mesh: Path = typer.Option(..., "--mesh", help="Predicted mesh."),
    gt: Path = typer.Option(..., "--gt", help="Ground-truth mesh."),
    fscore_threshold: float = typer.Option(0.02, "--fscore-threshold", help="F-score distance (unit size)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the metrics as JSON here."),
) -> None:
    """Chamfer distance, volume IoU, F-score and normal consistency of a mesh against the truth."""

    def run() -> None:
        from sjc3d.metrics import eval_command

        eval_command(mesh=mesh, gt=gt, fscore_threshold=fscore_threshold, json_out=json_out)

    guarded(run)


@app.command("views")
def views_cmd(
    image: Path = typer.Argument(..., help="Input image (RGBA png)."),
    azimuth: str = typer.Option("30,90,180", "--azimuth", help="Comma-separated Δazimuth (deg)."),
    elevation_delta: float = typer.Option(0.0, "--elevation-delta", help="Δelevation (deg, + is up)."),
    radius_delta: float = typer.Option(0.0, "--radius-delta", help="Δradius (scene units)."),
    input_elevation: float = typer.Option(0.0, "--input-elevation", help="Elevation of the input view."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub id, local folder or .ckpt."),
    steps: int = typer.Option(50, "--steps", help="DDIM steps."),
    guidance: float = typer.Option(3.0, "--guidance", help="Classifier-free guidance scale."),
    guidance_min_t: int = typer.Option(0, "--guidance-min-t",
                                       help="Guide only the DDIM steps with t >= this (0: every step, as Zero-1-to-3)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default outputs/views/<stem>/<time>)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda ... (default auto)."),
    object_fraction: float = typer.Option(InputConfig.object_fraction, "--object-fraction",
                                          help="Framing of the input (input.object_fraction); 0.56 for the shipped toy prior."),
) -> None:
    """Sample novel views of the input from the Zero-1-to-3 prior alone."""

    def run() -> None:
        from sjc3d.views import views_command

        views_command(image=image, azimuth=azimuth, elevation_delta=elevation_delta, radius_delta=radius_delta,
                      input_elevation=input_elevation, model=model, steps=steps, guidance=guidance, seed=seed,
                      out=out, device=device, object_fraction=object_fraction, guidance_min_t=guidance_min_t)

    guarded(run)


@app.command("train-prior")
def train_prior_cmd(
    args: Optional[List[str]] = typer.Argument(None, help="CONFIG (name in configs/prior/ or a YAML path) and key=value overrides."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the training run in this directory."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default outputs/prior/<config>)."),
) -> None:
    """Train (or fine-tune) a view-conditioned Zero-1-to-3-style prior; runs under `accelerate launch` too."""

    def run() -> None:
        from sjc3d.train_prior.command import train_prior_command

        config, overrides = split_positionals(args, "config")
        train_prior_command(config=config, overrides=overrides, resume=resume, out=out)

    guarded(run)


@app.command("make-views")
def make_views_cmd(
    out: Path = typer.Argument(..., help="Output folder (Zero-1-to-3 layout); an unfinished one is resumed."),
    objects: int = typer.Option(100, "--objects", help="Number of procedural objects."),
    views: int = typer.Option(12, "--views", help="Views per object."),
    size: int = typer.Option(64, "--size", help="Image side (pixels)."),
    seed: int = typer.Option(0, "--seed", help="Dataset seed: object k is a function of (seed, split, k)."),
    split: str = typer.Option("train", "--split", help="train or test (disjoint object streams)."),
    supersample: int = typer.Option(3, "--supersample", help="Sub-pixel rays per side (anti-aliasing)."),
    workers: int = typer.Option(1, "--workers", help="Processes rendering objects in parallel."),
) -> None:
    """Render procedural objects (primitives and their compositions) as Zero-1-to-3 training views."""

    def run() -> None:
        from sjc3d.datasets.make_views import make_views_command

        make_views_command(out=out, n_objects=objects, n_views=views, size=size, seed=seed, split=split,
                           supersample=supersample, workers=workers)

    guarded(run)


@app.command("sweep")
def sweep_cmd(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML (see configs/sweeps/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded trials; write nothing."),
    executor: str = typer.Option("local", "--executor", help="local or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (or RAY_ADDRESS)."),
    gpus_per_trial: float = typer.Option(0.0, "--gpus-per-trial", help="GPUs requested per Ray task."),
    out: Optional[Path] = typer.Option(None, "--out", help="Sweep directory (default outputs/sweeps/<name>)."),
    retries: int = typer.Option(3, "--retries", help="Ray: retries of a trial whose worker died (resumes its checkpoint)."),
) -> None:
    """Run an experiment sweep from a config file, locally or on Ray."""

    def run() -> None:
        from sjc3d.sweep import sweep_command

        sweep_command(sweep_file=sweep_file, dry_run=dry_run, executor=executor, address=address,
                      gpus_per_trial=gpus_per_trial, out=out, retries=retries)

    guarded(run)


@app.command("app")
def app_cmd(
    model: Optional[str] = typer.Option(None, "--model", help="Hub id, folder or .ckpt (default: the shipped toy prior)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on (0.0.0.0 = every interface)."),
    port: int = typer.Option(7860, "--port", help="Port to serve on."),
    runs: Path = typer.Option(Path("outputs"), "--runs", help="Folder for the run directories."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 ... (default auto)."),
) -> None:
    """Serve the live demo in a browser: novel views, a fit with previews, the mesh in 3D (needs the app extra)."""

    def run() -> None:
        from sjc3d.errors import ConfigError

        if not 1 <= port <= 65535:
            raise ConfigError(f"--port {port}: must be in [1, 65535]")
        from sjc3d.app import app_command

        app_command(model=model, host=host, port=port, runs=runs, device=device)

    guarded(run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
