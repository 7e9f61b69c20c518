"""A run trained on a GPU with tinycudann continues (`fit --resume`) and exports on a CPU machine.

The run is made here by a short fit whose checkpoint is then rewritten the way a tcnn run
writes it: config `field.backend: tcnn`, the hash table as tcnn's flat vector with its record,
and the optimiser's moments for that table in the same flat layout.
"""

from __future__ import annotations

import yaml
import torch

from sjc3d.config import load_config
from sjc3d.fields.portable import planes_to_tcnn
from sjc3d.rundir import RunPaths, load_checkpoint, load_run, save_checkpoint
from sjc3d.trainer import fit, fit_command


def as_tcnn_run(paths: RunPaths) -> None:
    state = load_checkpoint(paths.last_checkpoint)
    field = load_run(paths.root).field
    specs = field.encoding.specs
    planes = state["field"].pop("encoding.planes")
    record = dict(state["field"]["encoding._extra_state"], backend="tcnn")
    state["field"].pop("encoding._extra_state")
    state["field"]["encoding.encoding.params"] = planes_to_tcnn(planes, specs)
    state["field"]["encoding._extra_state"] = record
    grid_id = [name for name, _ in field.named_parameters()].index("encoding.planes")
    for name, moment in state["optimizer"]["state"][grid_id].items():
        if torch.is_tensor(moment) and moment.shape == planes.shape:
            state["optimizer"]["state"][grid_id][name] = planes_to_tcnn(moment, specs)
    save_checkpoint(paths.last_checkpoint, state)
    config = yaml.safe_load(paths.config.read_text())
    config["field"]["backend"] = "tcnn"
    paths.config.write_text(yaml.safe_dump(config))


def test_a_tcnn_run_resumes_and_exports_on_the_cpu(tmp_path):
    config = load_config(["cpu-tiny"], ["train.steps=3", "train.checkpoint_every=3", "train.preview_every=0"])
    fit(config, None, tmp_path / "run", progress=False)
    paths = RunPaths(tmp_path / "run")
    as_tcnn_run(paths)
    assert "encoding.encoding.params" in load_checkpoint(paths.last_checkpoint)["field"]

    result = fit_command(image=None, presets=[], overrides=["train.steps=5"], out=None, resume=paths.root)
    assert result.step == 5
    run = load_run(paths.root)
    assert run.step == 5 and run.field.encoding.backend == "torch"
