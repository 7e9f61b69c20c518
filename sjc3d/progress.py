"""Progress display: a rich bar on a terminal, plain log lines (or nothing) otherwise."""

from __future__ import annotations

import sys


class ProgressBar:
    """Progress of `total` units, starting at `start`.

    On a terminal, a rich bar (on stderr) with an info column.  Elsewhere (CI, logs), one plain
    line every `log_every` units when `log_every > 0`, else nothing.
    """

    def __init__(self, total: int, label: str, start: int = 0, log_every: int = 0, enabled: bool = True):
        self.total, self.label, self.log_every, self.enabled = total, label, log_every, enabled
        self.completed = start
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(label, total=total, completed=start, info="")
            self.bar.start()

    def update(self, completed: int, info: str = "") -> None:
        self.completed = completed
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, info=info)
        elif self.enabled and self.log_every > 0 and (completed % self.log_every == 0 or completed == self.total):
            print(f"{self.label} {completed}/{self.total}  {info}".rstrip(), flush=True)

    def advance(self) -> None:
        self.update(self.completed + 1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
