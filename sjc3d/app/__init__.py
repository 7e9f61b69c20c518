"""`sjc3d app`: the live demo in a browser (Gradio, the optional `app` extra).

    jobs.py      the work, without Gradio: prepare an input, sample views, fit/export/package a run
    layout.py    the Gradio page and the wiring of its events to the jobs
    examples.py  the bundled example inputs (assets/examples/)

`import sjc3d.app` imports neither Gradio nor torch; `app_command` does, when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sjc3d.errors import UserError

INSTALL_HINT = "install the app extra: pip install sjc3d[app]"


def require_gradio() -> None:
    """Gradio is an optional extra: without it, one line that says how to get it."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError(INSTALL_HINT) from None


def app_command(model: Optional[str], host: str, port: int, runs: Path, device: str = "auto") -> None:
    """Load the model once, build the page and serve it until interrupted."""
    require_gradio()
    from sjc3d.app.examples import example_images
    from sjc3d.app.jobs import Engine, default_model
    from sjc3d.app.layout import build_app, launch

    model = model or default_model()
    print(f"loading {model} ...", flush=True)
    engine = Engine(model, runs, device=device)
    runs.mkdir(parents=True, exist_ok=True)
    launch(build_app(engine), host, port, allowed=[runs.resolve(), *example_images()])
