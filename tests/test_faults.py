"""The faults of real machines (issue 13): preemption, full disks, two runs in one folder, lost workers.

In-process cases (the default run) pin down the pieces: atomic writes and their errors, the
signal contract, the lock, the checkpoint history, a stopped sweep trial.  The end-to-end
cases, marked `faults` (`make test-faults`, a minute or two), drive real `sjc3d fit` child
processes (SIGTERM and SIGINT, a filling disk, two fits on one folder, four processes racing
for a lock), a real Ray worker killed mid-trial and a preempted `train-prior`.  Each checks the
one-line outcome and that the resumed run ends at the same final step with every metric line in
place.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from sjc3d.atomic import WriteError, atomic_path, atomic_write_text
from sjc3d.config import load_config
from sjc3d.preemption import Preempted, signals_deferred, stop_on_signals
from sjc3d.rundir import RunPaths, load_checkpoint
from sjc3d.runlock import RunLock, RunLocked
from sjc3d.trainer import FitInterrupted, fit

REPO = Path(__file__).resolve().parent.parent
QUICK = ["train.preview_every=0", "train.log_every=1"]


def oracle_config(steps: int, *extra: str):
    return load_config(["cpu-tiny"], [f"train.steps={steps}", "train.checkpoint_every=2", *QUICK, *extra])


def metric_steps(run: Path) -> list[int]:
    path = RunPaths(run).metrics
    steps = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:
            pass  # a line being written right now
    return steps


def saved_step(run: Path, name: str = "last.pt") -> int:
    return int(load_checkpoint(RunPaths(run).checkpoints / name)["step"])


def start_fit(run: Path, *overrides: str) -> subprocess.Popen:
    """A child `sjc3d fit` on the CPU-tiny preset that would run for minutes."""
    return subprocess.Popen(
        [sys.executable, "-m", "sjc3d.cli", "fit", "-c", "cpu-tiny", "--out", str(run), "train.steps=100000",
         *QUICK, *overrides],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sjc3d.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def wait_until(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def resume_to(run: Path, total: int) -> subprocess.CompletedProcess:
    """`sjc3d fit --resume RUN train.steps=total`; checks it finished every step exactly once."""
    result = cli("fit", "--resume", str(run), f"train.steps={total}", *QUICK)
    assert result.returncode == 0, result.stderr
    assert saved_step(run, "final.pt") == total
    assert metric_steps(run) == list(range(1, total + 1))  # none lost, none twice
    assert not (run / ".lock").exists()
    return result


def fields_equal(a: dict, b: dict) -> bool:
    """Field state dicts equal, nested values (a backend's extra state) included."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not fields_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


# --------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_files_get_the_permissions_of_a_plain_open(tmp_path, umask):
    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.yaml", "a: 1\n")
        with open(tmp_path / "plain.yaml", "w") as f:
            f.write("a: 1\n")
        existing = tmp_path / "existing.yaml"
        existing.write_text("old\n")
        existing.chmod(0o640)
        atomic_write_text(existing, "new\n")
    finally:
        os.umask(before)
    mode = stat.S_IMODE((tmp_path / "atomic.yaml").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.yaml").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640 and existing.read_text() == "new\n"


def test_a_failed_write_names_the_path_and_the_cause_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "mesh.glb"
    target.write_bytes(b"the previous mesh")
    with pytest.raises(WriteError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a mesh")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == f"cannot write {target}: no space left on device"
    assert info.value.exit_code == 5
    assert target.read_bytes() == b"the previous mesh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mesh.glb"]  # no temporary file left


def test_an_unwritable_folder_is_one_line_too(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match=r"cannot write .*file/run/config.yaml: not a directory$"):
        atomic_write_text(tmp_path / "file" / "run" / "config.yaml", "a: 1\n")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_appended_logs_report_a_full_disk(monkeypatch):
    """metrics.jsonl and the sweep journal are appended, not replaced: the same one-line error."""
    import sjc3d.sweep.results as results
    from sjc3d.trainer import MetricsLog

    log = MetricsLog(Path("/dev/full"))  # every write to /dev/full fails with ENOSPC
    with pytest.raises(WriteError, match=r"^cannot write /dev/full: no space left on device$"):
        log.write({"step": 1, "loss": 0.5})
    log.close()
    monkeypatch.setattr(results, "JOURNAL", "full")
    with pytest.raises(WriteError, match=r"^cannot write /dev/full: no space left on device$"):
        results.append_journal(Path("/dev"), results.TrialRecord("t", "ok", "", "", "", "", 0.0))


def test_export_reports_a_full_disk_through_the_same_writer(tmp_path, monkeypatch):
    import trimesh

    from sjc3d.export.writers import write_mesh

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(trimesh.Trimesh, "export", no_space)  # the PLY writer is trimesh's
    with pytest.raises(WriteError, match=r"cannot write .*mesh\.ply: no space left on device"):
        write_mesh(trimesh.creation.box(), tmp_path / "mesh.ply")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- signals, in process


def test_a_signal_during_a_deferred_block_is_acted_on_after_it():
    with stop_on_signals() as stop:
        inside = []
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)
                inside.append(stop.is_set())  # held: not yet seen
        assert inside == [False] and stop.is_set() and stop.signals == ["SIGTERM", "SIGTERM"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_sigterm_stops_the_fit_between_steps_and_resumes_bit_identical(tmp_path):
    straight = fit(oracle_config(7), None, tmp_path / "straight", progress=False)

    def preempt(step, stats):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)

    run = tmp_path / "preempted"
    with stop_on_signals() as stop:
        result = fit(oracle_config(7), None, run, progress=False, on_step=preempt, stop=stop)
    assert result.stopped and result.step == 3 and stop.signal == "SIGTERM"
    assert saved_step(run) == 3 and metric_steps(run) == [1, 2, 3]  # no completed step lost
    resumed = fit(oracle_config(7), None, run, resume=True, progress=False)
    assert resumed.step == 7 and resumed.start_step == 3 and metric_steps(run) == list(range(1, 8))
    a = load_checkpoint(RunPaths(straight.run_dir).final_checkpoint)["field"]
    assert fields_equal(a, load_checkpoint(RunPaths(run).final_checkpoint)["field"])


def test_a_second_signal_abandons_the_step_and_the_cli_says_how_to_resume(tmp_path, monkeypatch):
    import sjc3d.trainer as trainer

    original = trainer.train_step

    def twice_in_step_4(stage, step):
        if step == 4:  # both land inside the step: the first asks to stop, the second to stop now
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return original(stage, step)

    monkeypatch.setattr(trainer, "train_step", twice_in_step_4)
    run = tmp_path / "run"
    with pytest.raises(Preempted) as info:
        trainer.fit_command(None, ["cpu-tiny"], ["train.steps=9", "train.checkpoint_every=100", *QUICK], run, None)
    assert info.value.exit_code == 75 and info.value.label == "stopped by SIGINT"
    assert str(info.value) == f"checkpoint of step 3 written; continue with: sjc3d fit --resume {run}"
    assert saved_step(run) == 3 and not (run / ".lock").exists()


def test_a_second_signal_during_the_checkpoint_write_waits_for_it(tmp_path, monkeypatch):
    import sjc3d.trainer as trainer

    original = trainer.save_run_checkpoint

    def signalled_save(paths, state, keep=0):
        if state["step"] == 4:  # the signals arrive before a byte is written
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
        return original(paths, state, keep)

    monkeypatch.setattr(trainer, "save_run_checkpoint", signalled_save)
    run = tmp_path / "run"
    with stop_on_signals() as stop, pytest.raises(FitInterrupted) as info:
        fit(oracle_config(9), None, run, progress=False, stop=stop)
    assert info.value.step == 4 and saved_step(run) == 4  # the write finished before the interrupt
    assert [p.name for p in RunPaths(run).checkpoints.iterdir()] == ["last.pt"]


# --------------------------------------------------------------------------- signals, child processes


@pytest.mark.faults
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_fit_saves_its_last_step_exits_75_and_resumes(tmp_path, signum):
    run = tmp_path / "run"
    child = start_fit(run, "train.checkpoint_every=1000")  # no periodic checkpoint would help
    wait_until(lambda: metric_steps(run)[-1:] >= [5], "step 5")
    child.send_signal(signum)
    _, err = child.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert child.returncode == 75, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    saved = saved_step(run)
    assert last == f"stopped by {name}: checkpoint of step {saved} written; continue with: sjc3d fit --resume {run}"
    assert saved == metric_steps(run)[-1] >= 5  # the checkpoint holds every completed step
    assert not (run / ".lock").exists()
    resume_to(run, saved + 3)


# A prior small enough to train in seconds (as tests/test_train_prior.py): 16² views, 8² latents.
TINY_PRIOR = [
    "model.image_size=16", "model.vae_channels=[8, 8]", "model.unet_channels=[16, 16]", "model.unet_layers=1",
    "model.unet_cross_attention=[false, true]", "model.embedding_dim=16", "model.clip_width=16",
    "model.clip_layers=1", "model.clip_heads=2", "model.clip_patch=4", "model.clip_image_size=16",
    "autoencoder.steps=4", "autoencoder.batch=4", "autoencoder.crop=8",
    "diffusion.steps=6", "diffusion.batch=4", "diffusion.warmup=2",
    "data.held_out_objects=2", "run.checkpoint_every=100", "run.log_every=1", "run.sample_every=0",
    "run.samples=2", "run.sample_steps=2", "run.device=cpu", "run.weights_dtype=float32",
]


@pytest.mark.faults  # renders its procedural views and trains two stages: ~10-30 s
def test_train_prior_stops_on_sigterm_with_a_checkpoint_and_resumes(tmp_path, monkeypatch):
    from sjc3d.train_prior import loop
    from sjc3d.train_prior.command import train_prior_command

    data = ["data.procedural_objects=8", "data.procedural_views=4", f"data.procedural_cache={tmp_path / 'views'}"]
    original, calls = loop.PriorTrainer._denoising_loss, []

    def preempted_in_step_3(self, *args, **kwargs):  # one call per diffusion step until the end
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(loop.PriorTrainer, "_denoising_loss", preempted_in_step_3)
    run = tmp_path / "prior"
    with pytest.raises(Preempted) as info:
        train_prior_command("toy", [*TINY_PRIOR, *data], None, run)
    assert info.value.exit_code == 75 and info.value.label == "stopped by SIGTERM"
    assert str(info.value) == f"checkpoint written; continue with: sjc3d train-prior --resume {run}"
    state = loop.load_training_checkpoint(loop.PriorRunPaths(run).checkpoint)
    assert (state["stage"], state["step"]) == ("diffusion", 3)  # the step in progress was completed
    monkeypatch.setattr(loop.PriorTrainer, "_denoising_loss", original)

    train_prior_command(None, [], run, None)
    records = [json.loads(line) for line in loop.PriorRunPaths(run).metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["stage"] == "diffusion"] == [1, 2, 3, 4, 5, 6]
    assert (loop.PriorRunPaths(run).model / "model_index.json").is_file()


# --------------------------------------------------------------------------- full disk


def test_a_full_disk_stops_the_fit_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """Injected at the writer: torch.save into the checkpoint file fails with ENOSPC half-way."""
    real_save = torch.save

    def fills_the_disk(obj, f, *args, **kwargs):
        if obj["step"] >= 6:
            f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fills_the_disk)
    run = tmp_path / "run"
    with pytest.raises(WriteError) as info:
        fit(oracle_config(9), None, run, progress=False)
    last = RunPaths(run).last_checkpoint
    assert str(info.value) == (
        f"cannot write {last}: no space left on device; training stopped after step 6, last good checkpoint: "
        f"step 4 in {last}; make room (or fix the folder), then continue with: sjc3d fit --resume {run}")
    monkeypatch.setattr(torch, "save", real_save)
    assert saved_step(run) == 4 and sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]
    assert not (run / ".lock").exists()
    resumed = fit(oracle_config(9), None, run, resume=True, progress=False)
    assert resumed.step == 9 and metric_steps(run) == list(range(1, 10))


@pytest.fixture
def small_disk(tmp_path):
    """A 40 MiB tmpfs (root only); skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; test_a_full_disk_stops_the_fit... injects ENOSPC instead")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the injected-ENOSPC test covers the writer")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full (ENOSPC); returns it."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 1 << 14, 1 << 10, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


@pytest.mark.faults
def test_a_fit_on_a_disk_that_fills_up_ends_in_one_line_and_resumes(small_disk):
    run = small_disk / "run"
    child = start_fit(run, "train.checkpoint_every=3")
    wait_until(lambda: RunPaths(run).last_checkpoint.is_file() and metric_steps(run)[-1:] >= [4], "a checkpoint")
    filler = fill(small_disk)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 5, err
    lines = err.strip().splitlines()
    saved = saved_step(run)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write {run}/"), err
    assert ": no space left on device; training stopped after step " in lines[0]
    assert f"last good checkpoint: step {saved} in {run}/checkpoints/last.pt" in lines[0]
    assert not [p for p in RunPaths(run).checkpoints.iterdir() if p.name != "last.pt"]  # no partial files
    filler.unlink()
    resume_to(run, saved + 3)


# --------------------------------------------------------------------------- one writer per run directory


RACER = """
import sys, time, pathlib
from sjc3d.runlock import RunLock, RunLocked
root, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
try:
    lock = RunLock(root).acquire()
except RunLocked as e:
    print("refused", e, flush=True)
    sys.exit(0)
print("won", flush=True)
time.sleep(1.5)
lock.release()
"""


@pytest.mark.faults
def test_processes_starting_at_the_same_instant_cannot_both_win_the_lock(tmp_path):
    for round_ in range(2):
        go = tmp_path / f"go{round_}"
        racers = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(go)], cwd=REPO,
                                   stdout=subprocess.PIPE, text=True) for _ in range(4)]
        time.sleep(1.0)  # all four are polling for `go`
        go.touch()
        outputs = {p.pid: p.communicate(timeout=60)[0].strip() for p in racers}
        winners = [pid for pid, out in outputs.items() if out == "won"]
        assert len(winners) == 1, outputs
        for pid, out in outputs.items():
            if pid != winners[0]:
                assert out.startswith(f"refused run directory {tmp_path} is in use by pid {winners[0]} on "), out
        assert not (tmp_path / ".lock").exists()


def test_a_lock_from_another_host_is_refused_unless_its_owner_is_known_dead(tmp_path, capsys):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 4242, "host": "node-7", "started": "2026-11-30T10:00:00",
                                                "command": "sjc3d fit"}) + "\n")
    with pytest.raises(RunLocked) as info:
        RunLock(tmp_path).acquire()
    assert f"delete {tmp_path / '.lock'}" in str(info.value) and "pid 4242 on node-7" in str(info.value)
    with RunLock(tmp_path, take_over_foreign=True) as lock:
        assert lock.previous.host == "node-7"
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert "took over the lock" in capsys.readouterr().err


def test_without_flock_the_owner_named_in_the_file_decides(tmp_path, monkeypatch, capsys):
    """A file system without flock (or no fcntl): a live pid on this host holds, a dead one does not."""
    import sjc3d.runlock as runlock

    monkeypatch.setattr(runlock, "fcntl", None)
    me = socket.gethostname()
    live = os.getppid()  # the process that started this one is alive
    (tmp_path / ".lock").write_text(json.dumps({"pid": live, "host": me, "started": "x", "command": ""}))
    with pytest.raises(RunLocked, match=f"in use by pid {live} on {me}"):
        RunLock(tmp_path).acquire()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # exited: its pid names no process now
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead, "host": me, "started": "x", "command": ""}))
    with RunLock(tmp_path) as lock:
        assert lock.previous.pid == dead and not lock.flock_works
    assert f"from pid {dead} on {me}" in capsys.readouterr().err and not (tmp_path / ".lock").exists()


@pytest.mark.faults
def test_a_second_fit_on_a_live_run_stops_at_once_and_a_killed_owner_is_taken_over(tmp_path):
    run = tmp_path / "run"
    owner = start_fit(run, "train.checkpoint_every=2")
    wait_until(lambda: RunPaths(run).last_checkpoint.is_file() and metric_steps(run)[-1:] >= [3], "a checkpoint")
    config_before = RunPaths(run).config.stat().st_mtime_ns
    second = cli("fit", "--resume", str(run), "train.steps=50")
    assert second.returncode == 6, second.stderr
    assert second.stderr.strip() == (
        f"error: run directory {run} is in use by pid {owner.pid} on {socket.gethostname()} "
        f"(started {json.loads((run / '.lock').read_text())['started']}); wait for it to finish or stop it "
        f"(kill -TERM {owner.pid} writes a checkpoint)")
    assert RunPaths(run).config.stat().st_mtime_ns == config_before  # it wrote nothing
    owner.kill()  # kill -9: no clean-up, the lock file stays
    owner.wait()
    assert json.loads((run / ".lock").read_text())["pid"] == owner.pid
    saved = saved_step(run)
    result = resume_to(run, saved + 3)
    assert f"warning: took over the lock of {run} from pid {owner.pid} on {socket.gethostname()}" in result.stderr


def test_a_fresh_fit_refuses_a_folder_holding_a_run_even_past_the_cli_check(tmp_path):
    run = tmp_path / "run"
    fit(oracle_config(2), None, run, progress=False)
    from sjc3d.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        fit(oracle_config(2), None, run, progress=False)
    assert saved_step(run, "final.pt") == 2


# --------------------------------------------------------------------------- checkpoint history


def test_an_unreadable_last_checkpoint_falls_back_to_the_history(tmp_path, capsys):
    straight = fit(oracle_config(8), None, tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    stop = threading.Event()
    first = fit(oracle_config(8, "train.keep_checkpoints=2"), None, run, progress=False, stop=stop,
                on_step=lambda step, stats: step == 5 and stop.set())
    paths = RunPaths(run)
    assert first.stopped and first.step == 5
    assert [s for s, _ in paths.history()] == [5, 4]  # steps 2 and 4 written, 2 pruned; the stop wrote 5
    assert paths.last_checkpoint.samefile(paths.history_checkpoint(5))  # one file, two names
    paths.last_checkpoint.write_bytes(b"\0" * 100)  # the disk lost the data behind both names
    leftover = paths.checkpoints / ".last.0badc0de.partial.pt"  # what a writer killed mid-write leaves
    leftover.write_bytes(b"\0" * 100)

    resumed = fit(oracle_config(8, "train.keep_checkpoints=2"), None, run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert (f"warning: checkpoint {paths.last_checkpoint} is corrupt or not an sjc3d checkpoint" in err
            and f"resuming from {paths.history_checkpoint(4)} (step 4) instead (also unreadable: step_000005.pt)"
            in err)
    assert resumed.start_step == 4 and resumed.step == 8 and metric_steps(run) == list(range(1, 9))
    assert (paths.checkpoints / "last.pt.unreadable").is_file() and not leftover.exists()
    assert [s for s, _ in paths.history()] == [8, 6]
    a = load_checkpoint(RunPaths(straight.run_dir).final_checkpoint)["field"]
    assert fields_equal(a, load_checkpoint(paths.final_checkpoint)["field"])


# --------------------------------------------------------------------------- sweeps


def write_sweep(folder: Path, steps: int, **extra) -> Path:
    import yaml

    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "faults", "base": ["cpu-tiny"],
        "overrides": {"train.steps": steps, "train.checkpoint_every": 2, "train.preview_every": 0,
                      "train.log_every": 1, "camera.resolution": 16, "render.n_samples": 24, **extra},
    }))
    return path


def test_a_stopped_local_trial_resumes_on_a_re_run(tmp_path):
    from sjc3d.sweep import load_sweep, read_journal, run_sweep

    sweep = load_sweep(write_sweep(tmp_path, 7))
    stop = threading.Event()

    def stopping_fit(config, image, run_dir, resume=False, progress=True, stop=None):
        return fit(config, image, run_dir, resume=resume, progress=progress, stop=stop,
                   on_step=lambda step, stats: step == 3 and stop.set())

    first = run_sweep(sweep, tmp_path / "out", fit=stopping_fit, stop=stop, report=lambda s: None)
    (trial,) = sweep.trials
    assert first.n_stopped == 1 and first.stopped.step == 3 and read_journal(tmp_path / "out")[trial.name].status == "stopped"
    run = tmp_path / "out" / trial.name
    assert saved_step(run) == 3

    second = run_sweep(sweep, tmp_path / "out", report=lambda s: None)
    record = read_journal(tmp_path / "out")[trial.name]
    assert second.n_ok == 1 and record.status == "ok"
    assert (record.step, record.retries, record.resumed_from) == (7, 1, 3)
    assert metric_steps(run) == list(range(1, 8))
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert (row["status"], row["retries"]) == ("ok", "1")


@pytest.mark.faults
def test_a_ray_trial_whose_worker_is_killed_resumes_from_its_checkpoint(tmp_path):
    pytest.importorskip("ray")
    from sjc3d.runlock import read_owner
    from sjc3d.sweep import load_sweep, read_journal, run_sweep

    sweep = load_sweep(write_sweep(tmp_path, 24))
    (trial,) = sweep.trials
    run = tmp_path / "out" / trial.name
    killed = {}

    def kill_the_worker():
        wait_until(lambda: RunPaths(run).last_checkpoint.is_file() and metric_steps(run)[-1:] >= [6], "a checkpoint",
                   timeout=240)
        owner = read_owner(run)
        killed["pid"], killed["step"] = owner.pid, saved_step(run)
        os.kill(owner.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_worker, daemon=True)
    killer.start()
    lines: list[str] = []
    summary = run_sweep(sweep, tmp_path / "out", executor="ray", ray_num_cpus=1, max_retries=2, report=lines.append)
    killer.join(timeout=5)
    assert killed["pid"] != os.getpid()  # a Ray worker, not this process
    record = read_journal(tmp_path / "out")[trial.name]
    assert summary.n_ok == 1 and record.status == "ok", (record, lines)
    assert (record.step, record.retries) == (24, 1)
    assert record.resumed_from >= killed["step"] >= 2  # continued from a checkpoint, not from scratch
    assert metric_steps(run) == list(range(1, 25))
    assert any("worker lost" in line and "retry 1/2" in line for line in lines), lines
