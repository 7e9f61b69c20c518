"""Sweeps: expansion and names, validation before any run, failures, resume, dry run, tables."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from sjc3d.errors import ConfigError, InputError
from sjc3d.sweep import SweepFailed, load_sweep, read_journal, run_sweep, sweep_command
from sjc3d.sweep.results import JOURNAL, append_journal
from sjc3d.sweep.spec import MAX_NAME, sanitize_name

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "configs" / "sweeps"


from sjc3d.trainer import FitResult  # what the fake fits return


class FakeFit:
    """Stands in for trainer.fit: records calls, fails on request, loss = lr (known order)."""

    def __init__(self, fail_when=lambda config: False):
        self.calls: list[str] = []
        self.fail_when = fail_when

    def __call__(self, config, image, run_dir, resume=False, progress=True, stop=None):
        assert progress is False
        self.calls.append(Path(run_dir).name)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "config.seen").write_text(f"{config.train.lr} {config.train.seed} {image}")
        if self.fail_when(config):
            raise RuntimeError("boom: fake trial failure\nsecond line of the message")
        return FitResult(Path(run_dir), config.train.steps, {"loss": config.train.lr, "psnr": 20.0}, 0.01)


def make_images(folder: Path, names=("cat.png", "dog.png")) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        Image.new("RGBA", (32, 32), (200, 30, 30, 255)).save(folder / name)
        paths.append(folder / name)
    return paths


def write_sweep(folder: Path, data: dict, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A sweep folder with two images and a local preset."""
    make_images(tmp_path / "imgs")
    (tmp_path / "mypreset.yaml").write_text("train:\n  steps: 7\n  lr: 0.5\ncamera:\n  resolution: 8\n")
    return tmp_path


# --------------------------------------------------------------------------- expansion


def test_grid_images_seeds_count_order_and_names(tiny: Path):
    path = write_sweep(tiny, {
        "name": "g", "base": ["mypreset"],
        "grid": {"train.lr": [0.01, 0.02], "prior.guidance_scale": [25, 50, 100]},
        "images": ["imgs/*.png"], "seeds": [0, 1],
    })
    sweep = load_sweep(path)
    assert len(sweep.trials) == 2 * 3 * 2 * 2 == 24
    assert sweep.shape == "2 images × 6 variants × 2 seeds"
    names = [t.name for t in sweep.trials]
    assert len(set(names)) == 24
    # Image outermost, seed innermost, grid keys in file order with the last varying fastest.
    assert names[:3] == [
        "cat__train.lr=0.01__prior.guidance_scale=25__seed0",
        "cat__train.lr=0.01__prior.guidance_scale=25__seed1",
        "cat__train.lr=0.01__prior.guidance_scale=50__seed0",
    ]
    assert names[-1] == "dog__train.lr=0.02__prior.guidance_scale=100__seed1"
    last = sweep.trials[-1]
    assert last.image == (tiny / "imgs" / "dog.png").resolve()
    assert (last.config.train.lr, last.config.prior.guidance_scale, last.config.train.seed) == (0.02, 100.0, 1)
    assert last.config.train.steps == 7 and last.config.camera.resolution == 8  # from the preset
    assert all(re.fullmatch(r"[A-Za-z0-9._=,+-]+", n) for n in names)


def test_grid_times_runs_and_precedence(tiny: Path):
    path = write_sweep(tiny, {
        "base": "mypreset.yaml",
        "overrides": {"train": {"steps": 3, "lr": 0.2}, "sjc.n_views": 2},
        "grid": {"prior.guidance_scale": [10, 20]},
        "runs": [{"name": "fast", "train.lr": 0.3}, {"sjc.variance_reduction": False}],
        "images": ["imgs/cat.png"],
    })
    sweep = load_sweep(path)
    assert sweep.name == "sweep"  # the file's stem
    assert [t.name for t in sweep.trials] == [
        "cat__fast__prior.guidance_scale=10",
        "cat__fast__prior.guidance_scale=20",
        "cat__sjc.variance_reduction=false__prior.guidance_scale=10",
        "cat__sjc.variance_reduction=false__prior.guidance_scale=20",
    ]
    fast, plain = sweep.trials[0].config, sweep.trials[2].config
    assert fast.train.lr == 0.3 and plain.train.lr == 0.2  # a run re-sets a common override
    assert fast.train.steps == 3 and fast.sjc.n_views == 2  # overrides beat the preset
    assert plain.sjc.variance_reduction is False and fast.sjc.variance_reduction is True
    assert sweep.trials[0].label == "fast prior.guidance_scale=10 train.lr=0.3"


def test_runs_only_and_nothing_varied(tiny: Path):
    runs = write_sweep(tiny, {"runs": [{"name": "a"}, {"name": "b", "train.lr": 0.1}], "images": ["imgs/dog.png"]},
                       "runs.yaml")
    assert [t.name for t in load_sweep(runs).trials] == ["dog__a", "dog__b"]
    oracle = write_sweep(tiny, {"overrides": ["prior.source=oracle:mesh.obj", "train.steps=2"]}, "one.yaml")
    (trial,) = load_sweep(oracle).trials
    assert trial.name == "base" and trial.image is None  # an oracle renders its own input
    assert trial.config.train.steps == 2


def test_values_round_trip_and_names_are_sanitised(tiny: Path):
    path = write_sweep(tiny, {
        "grid": {"prior.source": ["oracle:/a b/m:1.obj", "oracle:/a b/m-1.obj"], "train.lr": [1.0e-5]},
    })
    trials = load_sweep(path).trials
    assert [t.config.prior.source for t in trials] == ["oracle:/a b/m:1.obj", "oracle:/a b/m-1.obj"]
    assert trials[0].config.train.lr == 1e-5
    # Both sources sanitise to the same text: the second one is made unique.
    assert trials[0].name == "prior.source=oracle-a-b-m-1.obj__train.lr=1e-05"
    assert trials[1].name == trials[0].name + "-2"
    long = sanitize_name("x" * 400)
    assert len(long) == MAX_NAME and long != sanitize_name("x" * 401)
    assert sanitize_name("../..") == "trial" and not sanitize_name(".hidden/dir").startswith(".")


# --------------------------------------------------------------------------- validation


def test_bad_key_in_one_run_fails_before_any_trial(tiny: Path):
    path = write_sweep(tiny, {
        "runs": [{"name": "good"}, {"name": "typo", "train.lrr": 0.1}], "images": ["imgs/cat.png"],
    })
    fit = FakeFit()
    with pytest.raises(ConfigError) as info:
        sweep_command(path, out=tiny / "out", fit=fit)
    message = str(info.value)
    assert "trial cat__typo" in message and "train.lrr" in message and "train.lr" in message
    assert "\n" not in message
    assert fit.calls == [] and not (tiny / "out").exists()


def test_bad_value_in_one_grid_point_names_that_trial(tiny: Path):
    path = write_sweep(tiny, {"grid": {"train.lr": [0.1, -1.0]}, "images": ["imgs/cat.png"]})
    with pytest.raises(ConfigError, match=r"trial cat__train.lr=-1.0: train.lr=-1.0: must be positive"):
        load_sweep(path)


@pytest.mark.parametrize("data, pattern", [
    ({"grid": {"train.lr": [0.1]}, "overrides": {"train.lr": 0.2}}, "in both `overrides` and `grid`"),
    ({"grid": {"train.lr": [0.1]}, "runs": [{"train.lr": 0.2}]}, "which the grid varies"),
    ({"seeds": [0, 1], "overrides": ["train.seed=3"]}, "train.seed is set elsewhere"),
    ({"grid": {"train.lr": 0.1}}, "needs a non-empty list"),
    ({"seeds": [0, 0]}, "listed twice"),
    ({"runs": [{"name": "a"}, {"name": "a"}]}, "same name"),
    ({"sort_order": "up"}, "sort_order"),
    ({"gird": {"train.lr": [0.1]}}, "did you mean 'grid'"),
    ({"base": ["no-such-preset"]}, "not found"),
    ({}, "needs an input image"),
])
def test_sweep_file_mistakes_are_one_line_config_errors(tiny: Path, data: dict, pattern: str):
    with pytest.raises(ConfigError, match=re.escape(pattern)) as info:
        load_sweep(write_sweep(tiny, data))
    assert "\n" not in str(info.value)


def test_missing_images_fail_up_front(tiny: Path):
    with pytest.raises(InputError, match="image not found: imgs/cow.png"):
        load_sweep(write_sweep(tiny, {"images": ["imgs/cat.png", "imgs/cow.png"]}))
    with pytest.raises(InputError, match="no file matches"):
        load_sweep(write_sweep(tiny, {"images": ["imgs/*.jpg"]}))


def test_images_resolve_relative_to_the_sweep_file_then_cwd(tiny: Path, monkeypatch):
    sub = tiny / "sweeps"
    sub.mkdir()
    path = write_sweep(sub, {"images": ["imgs/cat.png"]})  # not next to the file: found from cwd
    monkeypatch.chdir(tiny)
    assert load_sweep(path).trials[0].image == (tiny / "imgs" / "cat.png").resolve()
    make_images(sub / "imgs", ["cat.png"])  # now next to the file: that one wins
    assert load_sweep(path).trials[0].image == (sub / "imgs" / "cat.png").resolve()


# --------------------------------------------------------------------------- running


def test_failing_trial_is_recorded_and_the_sweep_finishes(tiny: Path):
    path = write_sweep(tiny, {
        "name": "f", "grid": {"train.lr": [0.3, 0.1, 0.2]}, "images": ["imgs/*.png"], "sort_by": "loss",
    })
    fit = FakeFit(fail_when=lambda c: c.train.lr == 0.2)
    out = tiny / "out"
    with pytest.raises(SweepFailed, match=r"2 of 6 trials failed") as info:
        sweep_command(path, out=out, fit=fit)
    assert info.value.exit_code == 1
    assert len(fit.calls) == 6  # the failures did not stop the others

    lines = (out / JOURNAL).read_text().splitlines()
    assert len(lines) == 6
    records = read_journal(out)
    failed = records["cat__train.lr=0.2"]
    assert failed.status == "failed" and failed.error == "RuntimeError: boom: fake trial failure second line of the message"
    assert "Traceback" in (out / "cat__train.lr=0.2" / "traceback.txt").read_text()
    assert records["dog__train.lr=0.1"].metrics == {"loss": 0.1, "psnr": 20.0}
    assert (out / "sweep.yaml").read_text() == path.read_text()

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [  # sorted by loss (asc), failures last in sweep order
        "cat__train.lr=0.1", "dog__train.lr=0.1", "cat__train.lr=0.3", "dog__train.lr=0.3",
        "cat__train.lr=0.2", "dog__train.lr=0.2",
    ]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"] * 2
    assert list(rows[0])[:5] == ["trial", "overrides", "image", "run_dir", "status"]
    assert rows[0]["loss"] == "0.1" and rows[0]["image"] == "cat.png" and rows[0]["overrides"] == "train.lr=0.1"
    assert rows[-1]["error"].startswith("RuntimeError: boom")
    md = (out / "results.md").read_text()
    assert "6 trials (2 images × 3 variants): 4 ok, 2 failed" in md
    assert md.count("\n| ") == 7  # header + 6 rows


def test_resume_skips_finished_trials_and_reruns_failed_and_changed(tiny: Path):
    data = {"name": "r", "grid": {"train.lr": [0.1, 0.2]}, "images": ["imgs/cat.png"], "sort_order": "desc"}
    path = write_sweep(tiny, data)
    out = tiny / "out"
    first = FakeFit(fail_when=lambda c: c.train.lr == 0.2)
    with pytest.raises(SweepFailed):
        sweep_command(path, out=out, fit=first)
    stale = out / "cat__train.lr=0.2" / "traceback.txt"
    assert stale.is_file()

    second = FakeFit()
    summary = sweep_command(path, out=out, fit=second)
    assert second.calls == ["cat__train.lr=0.2"]  # only the failed one
    assert (summary.n_skipped, summary.n_ok, summary.n_failed) == (1, 1, 0)
    assert not stale.exists()  # the failed attempt's directory was replaced
    assert {r.status for r in read_journal(out).values()} == {"ok"}
    with open(out / "results.csv", newline="") as f:
        assert [r["trial"] for r in csv.DictReader(f)] == ["cat__train.lr=0.2", "cat__train.lr=0.1"]  # desc

    third = FakeFit()
    sweep_command(path, out=out, fit=third)
    assert third.calls == []  # everything done

    data["overrides"] = {"train.steps": 5}  # a changed config is not "done"
    write_sweep(tiny, data)
    fourth = FakeFit()
    sweep_command(path, out=out, fit=fourth)
    assert sorted(fourth.calls) == ["cat__train.lr=0.1", "cat__train.lr=0.2"]
    assert len((out / JOURNAL).read_text().splitlines()) == 2 + 1 + 2


def test_torn_journal_line_is_skipped_and_not_glued_to(tiny: Path):
    path = write_sweep(tiny, {"name": "t", "grid": {"train.lr": [0.1, 0.2]}, "images": ["imgs/cat.png"]})
    out = tiny / "out"
    sweep_command(path, out=out, fit=FakeFit())
    with open(out / JOURNAL, "a") as f:
        f.write('{"trial": "cat__train.lr=0.1", "status": "fai')  # killed mid-write
    assert read_journal(out)["cat__train.lr=0.1"].status == "ok"
    record = read_journal(out)["cat__train.lr=0.2"]
    append_journal(out, record)
    lines = (out / JOURNAL).read_text().splitlines()
    assert json.loads(lines[-1])["trial"] == "cat__train.lr=0.2" and len(lines) == 4


def test_dry_run_prints_the_plan_and_writes_nothing(tiny: Path, capsys, monkeypatch):
    monkeypatch.chdir(tiny)
    path = write_sweep(tiny, {"name": "d", "grid": {"train.lr": [0.1, 0.2]}, "images": ["imgs/*.png"]})
    fit = FakeFit()
    before = sorted(p for p in tiny.rglob("*"))
    assert sweep_command(path, dry_run=True, fit=fit) is None
    assert sorted(p for p in tiny.rglob("*")) == before and fit.calls == []
    printed = capsys.readouterr().out
    assert "4 trials" in printed and "dog.png" in printed and printed.count("new") == 4

    run_sweep(load_sweep(path), tiny / "outputs" / "sweeps" / "d", fit=FakeFit(), report=lambda s: None)
    sweep_command(path, dry_run=True, fit=fit)
    assert capsys.readouterr().out.count("done") == 4 and fit.calls == []


def test_cli_reports_a_bad_sweep_in_one_line(tiny: Path):
    from typer.testing import CliRunner

    from sjc3d.cli import app

    path = write_sweep(tiny, {"grid": {"train.lr": [0.1, "fast"]}, "images": ["imgs/cat.png"]})
    result = CliRunner().invoke(app, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 2
    assert "trial cat__train.lr=fast: train.lr='fast': expected float" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["sweep", str(path), "--gpus-per-trial", "1"])
    assert result.exit_code == 2 and "--executor ray" in result.output


# --------------------------------------------------------------------------- shipped files, real trainer


def test_shipped_sweep_files_expand_and_validate():
    example = load_sweep(SWEEPS / "example.yaml")
    assert len(example.trials) == 2 * 4 * 2
    assert example.trials[0].name == "cactus_rgba__eq16__train.lr=0.02__prior.guidance_scale=50"
    grid = load_sweep(SWEEPS / "cpu_tiny_grid.yaml")
    assert len(grid.trials) == 4


def test_cpu_tiny_grid_runs_locally_with_the_real_trainer(tmp_path: Path, monkeypatch):
    """The shipped 2 × 2 sweep on the CPU-tiny preset, shortened to 3 steps, end to end."""
    import torch

    torch.manual_seed(0)
    monkeypatch.chdir(REPO)  # the preset's oracle mesh path is relative to the project
    # A few steps, smaller renders and no preview strips keep four fits to seconds each.
    shorten = ["train.steps=3", "train.preview_every=0", "camera.resolution=16", "render.n_samples=24"]
    sweep = load_sweep(SWEEPS / "cpu_tiny_grid.yaml", extra_overrides=shorten)
    summary = run_sweep(sweep, tmp_path / "sweep", report=lambda s: None)
    records = read_journal(tmp_path / "sweep")
    errors = {r.trial: r.error for r in records.values() if r.status != "ok"}
    assert errors == {}
    assert (summary.n_ok, summary.n_failed) == (4, 0)
    for trial in sweep.trials:
        record = records[trial.name]
        assert record.step == 3 and record.metrics
        assert Path(record.run_dir) == (tmp_path / "sweep" / trial.name).resolve()
        assert (Path(record.run_dir) / "checkpoints" / "final.pt").is_file()
    assert (tmp_path / "sweep" / "results.md").read_text().count("| ok |") == 4
