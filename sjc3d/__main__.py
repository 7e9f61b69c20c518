"""`python -m sjc3d ...` (and `accelerate launch -m sjc3d train-prior ...`) run the CLI."""

from sjc3d.cli import app

app(prog_name="sjc3d")
