"""The Gradio page of `sjc3d app`: widgets and the wiring of their events to `Engine` jobs.

    input    upload (or an example) → the preprocessed view, or the loader's one-line error
    views    Δpolar, Δazimuth, Δradius, guidance, steps, seed, samples → a gallery (the prior alone)
    3D       preset, steps, seed → a fit with live progress and preview strips → the mesh in a
             3D viewer, downloads (GLB/OBJ/PLY, turntable, run zip); Cancel keeps the checkpoint

Every event that uses the device shares one concurrency group of size 1 (`DEVICE`): Gradio's
queue runs them one at a time and shows each waiting page its place in the line.  Nothing here
computes anything; callbacks translate widget values to `jobs` requests and results back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

# Gradio reads this at import time: no usage statistics, no version check over the network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from sjc3d.app.examples import example_images  # noqa: E402
from sjc3d.app.jobs import (  # noqa: E402
    ACCEPTED_SUFFIXES, ORACLE_NOTE, Engine, FitRequest, FitUpdate, Preset, ViewsRequest, default_preset, model_label,
    one_line,
)
from sjc3d.errors import UserError  # noqa: E402

DEVICE = "device"  # concurrency group of every event that runs on the model's device
TITLE = "sjc3d: one photo in, a coloured 3D mesh out"
CSS = """
#fit-status, #views-status, #input-status { min-height: 2em; }
"""


# --------------------------------------------------------------------------- callbacks


def preset_note(preset: Preset) -> str:
    return f"*{preset.description}*" + (f" — the oracle {ORACLE_NOTE}." if preset.oracle else "")


def make_callbacks(engine: Engine) -> dict:
    """The page's event handlers, bound to `engine` (plain functions: the tests call them too)."""

    def prepare(upload: Optional[str]):
        if not upload:
            return None, ""
        try:
            return str(engine.prepare(upload)), f"ready: {Path(upload).name}, framed as the model sees it"
        except UserError as e:
            return None, one_line(e)

    def views(upload, elevation, polar, azimuth, radius, guidance, steps, seed, samples, progress=gr.Progress()):
        request = ViewsRequest(Path(upload) if upload else None, float(elevation), float(polar), float(azimuth),
                               float(radius), float(guidance), int(steps), int(seed), int(samples))
        try:
            paths = engine.views(request, progress=lambda done, total: progress((done, total), desc="DDIM steps"))
        except UserError as e:
            return [], one_line(e)
        caption = f"Δpolar {polar:g}°, Δazimuth {azimuth:g}°, Δradius {radius:g}"
        return ([(str(p), f"{caption}, sample {i}") for i, p in enumerate(paths)],
                f"{len(paths)} views from the prior alone (no 3D), {int(steps)} DDIM steps, guidance {guidance:g}")

    def submit() -> str:
        return engine.submit()

    def fit(job_id, upload, preset, steps, elevation, seed, progress=gr.Progress()):
        request = FitRequest(Path(upload) if upload else None, preset, int(steps), float(elevation), int(seed))
        shown_preview = None
        for update in engine.fit(request, job_id):
            if update.total and not update.done:
                progress((update.step, update.total), desc="fit steps")
            preview = gr.skip()
            if update.preview is not None and update.preview != shown_preview:
                shown_preview = update.preview
                preview = str(update.preview)
            yield update.message, preview, (result_value(update) if update.done else gr.skip())

    def preset(name: str):
        chosen = engine.preset(name)
        return preset_note(chosen), chosen.steps

    def cancel(job_id) -> None:
        if engine.cancel(job_id):
            gr.Info("stopping after the current step; the checkpoint is kept")
        else:
            gr.Info("no fit of this page is running")

    return {"prepare": prepare, "views": views, "preset": preset, "submit": submit, "fit": fit, "cancel": cancel}


def result_value(update: FitUpdate) -> tuple:
    """A finished fit's (mesh, downloads, turntable) for `show_result`; a cancelled one keeps its zip."""
    if update.files is not None:
        f = update.files
        return str(f.glb), [str(p) for p in (f.glb, f.obj, f.ply, f.video, f.archive)], str(f.video)
    return None, [str(update.archive)] if update.archive else None, None


def show_result(result: Optional[tuple]) -> tuple:
    """(3D viewer, downloads, turntable) from the fit's result, or all empty."""
    return result if result is not None else (None, None, None)


# --------------------------------------------------------------------------- the page


def build_app(engine: Engine) -> gr.Blocks:
    """The page, wired to `engine`; launch it with `launch(blocks, ...)`."""
    on = make_callbacks(engine)
    preset0 = engine.preset(default_preset(engine.presets, engine.model))

    with gr.Blocks(title="sjc3d", analytics_enabled=False) as blocks:
        gr.Markdown(f"## {TITLE}\nModel: {model_label(engine.model)}  \nDevice: `{engine.device}` · "
                    f"runs are written to `{engine.runs}` (normal run directories: `sjc3d export`, "
                    "`render` and `fit --resume` work on them)")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="input image (PNG, JPEG or WebP; RGBA with a transparent background)",
                                 file_types=list(ACCEPTED_SUFFIXES), type="filepath", elem_id="upload")
                examples = example_images()
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[upload], label="examples")
                elevation = gr.Slider(-30, 60, value=0, step=1, label="elevation of the input camera (°)",
                                      info="Zero-1-to-3 cannot see it; 0 = side view")
            with gr.Column():
                prepared = gr.Image(label="preprocessed view (cut out, recentred, on white)", type="filepath",
                                    interactive=False, height=256, elem_id="prepared")
                input_status = gr.Markdown(elem_id="input-status")

        with gr.Tab("Novel views"):
            with gr.Row():
                polar = gr.Slider(-90, 90, value=0, step=1, label="Δpolar (°, + moves the camera down)")
                azimuth = gr.Slider(-180, 180, value=90, step=1, label="Δazimuth (°, + moves it to its right)")
                radius = gr.Slider(-0.5, 0.5, value=0, step=0.05, label="Δradius (scene units)")
            with gr.Row():
                guidance = gr.Slider(1, 10, value=3, step=0.5, label="guidance scale")
                ddim_steps = gr.Slider(5, 200, value=50, step=1, label="DDIM steps", elem_id="ddim-steps")
                view_seed = gr.Number(0, precision=0, label="seed")
                samples = gr.Slider(1, 8, value=4, step=1, label="samples", elem_id="samples")
            views_button = gr.Button("Generate views", variant="primary", elem_id="views-button")
            views_status = gr.Markdown(elem_id="views-status")
            gallery = gr.Gallery(label="novel views", columns=4, height="auto", elem_id="gallery")

        with gr.Tab("3D"):
            with gr.Row():
                preset = gr.Dropdown([p.name for p in engine.presets], value=preset0.name, label="preset",
                                     elem_id="preset")
                fit_steps = gr.Slider(1, 20000, value=preset0.steps, step=1, label="steps", elem_id="fit-steps")
                fit_seed = gr.Number(0, precision=0, label="seed")
            note = gr.Markdown(preset_note(preset0))
            with gr.Row():
                fit_button = gr.Button("Fit", variant="primary", elem_id="fit-button")
                cancel_button = gr.Button("Cancel", variant="stop", elem_id="cancel-button")
            fit_status = gr.Markdown(elem_id="fit-status")
            preview = gr.Image(label="preview strip (turntable of the field)", type="filepath", interactive=False,
                               height=160, elem_id="preview")
            model3d = gr.Model3D(label="mesh", clear_color=(1.0, 1.0, 1.0, 1.0), elem_id="model3d")
            with gr.Row():
                downloads = gr.File(label="downloads: GLB, OBJ, PLY, turntable, run directory (zip)",
                                    file_count="multiple", interactive=False, elem_id="downloads")
                turntable = gr.Video(label="turntable", interactive=False, height=320, elem_id="turntable")
        job, result = gr.State(None), gr.State(None)

        upload.change(on["prepare"], [upload], [prepared, input_status], concurrency_limit=None)
        views_button.click(on["views"], [upload, elevation, polar, azimuth, radius, guidance, ddim_steps, view_seed,
                                         samples], [gallery, views_status],
                           concurrency_id=DEVICE, concurrency_limit=1, show_progress_on=[views_status])
        preset.change(on["preset"], [preset], [note, fit_steps], queue=False)
        # The result reaches the viewer by a plain event after the stream: Gradio 6's Model3D does
        # not start its viewer when its value arrives from a streaming (generator) event.
        fit_button.click(on["submit"], None, [job], queue=False).then(
            on["fit"], [job, upload, preset, fit_steps, elevation, fit_seed], [fit_status, preview, result],
            concurrency_id=DEVICE, concurrency_limit=1, show_progress_on=[fit_status]).then(
            show_result, [result], [model3d, downloads, turntable], queue=False)
        cancel_button.click(on["cancel"], [job], None, queue=False)
    return blocks


def launch(blocks: gr.Blocks, host: str, port: int, allowed: list[Path], block: bool = True) -> None:
    """Serve the page on host:port; never a share link, everything from this machine."""
    blocks.queue(default_concurrency_limit=1)
    blocks.launch(server_name=host, server_port=port, share=False, allowed_paths=[str(p) for p in allowed],
                  show_error=True, ssr_mode=False, mcp_server=False, pwa=False, css=CSS,
                  prevent_thread_lock=not block)
