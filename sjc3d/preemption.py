"""Stopping a long job cleanly when the machine is taken back.

Slurm, Kubernetes and Ray send SIGTERM some seconds before they kill a job (Slurm's
GraceTime, the pod's terminationGracePeriodSeconds: 30 s by default); a user presses Ctrl-C
(SIGINT).  A training loop that wants to lose nothing turns these signals into a stop flag,
finishes the step it is in, writes a checkpoint of that step and exits with `Preempted`:

    from sjc3d.preemption import Preempted, signals_deferred, stop_on_signals

    with stop_on_signals() as stop:            # SIGTERM/SIGINT now set `stop`
        for step in range(start + 1, total + 1):
            if stop.is_set():                  # checked between steps: nothing half-done
                with signals_deferred():       # a second signal waits until the file is whole
                    save_checkpoint(path, state_after(step - 1))
                raise Preempted.after(step - 1, stop.signal, "sjc3d train-prior --resume RUN")
            train_one_step(step)

The contract:

- the first signal sets the flag and prints one line; the loop stops at its next step boundary
  and loses no completed step;
- a second signal means "now": it raises KeyboardInterrupt wherever the main thread is, so a
  step in progress is abandoned (the loop's `except KeyboardInterrupt` then saves the last
  completed step);
- inside `signals_deferred()` signals are held and delivered when the block ends, so a
  checkpoint being written is always completed (the write is atomic anyway, see atomic.py:
  at worst the previous checkpoint would stay; deferring makes the new one land);
- `Preempted` is a one-line `UserError` with exit code 75 (EX_TEMPFAIL in sysexits.h, "try
  again later"): a job script can tell "stopped with a checkpoint, run --resume" from a crash
  (1-6) or a kill (137, 143 from the shell).

Python runs signal handlers only in the main thread, and only the main thread may install
them: elsewhere (the web app's worker threads) `stop_on_signals` installs nothing and the
flag is set only by `stop.set()`, and `signals_deferred` defers nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import Iterator, Optional, Sequence

from sjc3d.errors import UserError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(UserError):
    """A signal stopped the job after a checkpoint of its last completed step was written.

    The CLI prints it as `stopped by SIGTERM: checkpoint of step 290 written; continue with: ...`
    (its `label` takes the place of the usual `error`).
    """

    exit_code = 75  # EX_TEMPFAIL: nothing lost, resume later

    def __init__(self, message: str, signal_name: Optional[str] = None):
        super().__init__(message)
        self.label = f"stopped by {signal_name}" if signal_name else "stopped"

    @classmethod
    def after(cls, step: int, signal_name: Optional[str], resume: str, what: str = "") -> "Preempted":
        """`checkpoint of step 290 written; continue with: <resume>`; `what` names the job (`trial X`)."""
        where = f"{what}: " if what else ""
        return cls(f"{where}checkpoint of step {step} written; continue with: {resume}", signal_name)


class SignalStop:
    """A stop flag set by the first SIGTERM/SIGINT (or by `set()`); `is_set()` like an Event.

    Deliberately not a threading.Event: its `set()` takes a lock, and a signal handler that
    interrupts the main thread inside that lock would deadlock.  Setting a bool cannot.
    """

    def __init__(self) -> None:
        self._set = False
        self.signals: list[str] = []  # names of the signals received, in order

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    @property
    def signal(self) -> Optional[str]:
        """The first signal received ('SIGTERM', 'SIGINT'), or None if set by `set()`."""
        return self.signals[0] if self.signals else None

    def handle(self, signum: int, frame: object = None) -> None:
        """The signal handler: first signal -> flag; any further one -> KeyboardInterrupt."""
        name = signal.Signals(signum).name
        self.signals.append(name)
        if len(self.signals) > 1:
            raise KeyboardInterrupt(name)
        self._set = True
        # os.write, not print: the handler may run while the main thread is inside a print.
        note = (f"{name} received at {time.strftime('%H:%M:%S')}: stopping after the current step "
                f"(send it again to stop at once)\n")
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), note.encode())


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[SignalStop]:
    """Install `SignalStop.handle` for `signals` during the block (main thread only).

    Yields the flag; the previous handlers come back when the block exits.
    """
    stop = SignalStop()
    if not in_main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop.handle) for s in signals}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def signals_deferred(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Hold `signals` during the block; deliver them, in order, once it has ended.

    Delivered means: the handler that was in place is called (ours sets the stop flag or
    raises KeyboardInterrupt; Python's default SIGINT handler raises KeyboardInterrupt); a
    signal whose action was the default (SIGTERM's: terminate) is raised again, so the process
    ends as it would have, only after the block.  Not in the main thread: defers nothing.
    """
    if not in_main_thread():
        yield
        return
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for signum in held:
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)
