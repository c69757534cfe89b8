"""Terminal reporting: one line per job and rich progress bars for long jobs."""

from __future__ import annotations

import sys


class Reporter:
    def __init__(self, quiet: bool = False):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[info]}"), console=self.console, transient=True, disable=quiet)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def __call__(self, event: tuple) -> None:
        kind = event[0]
        if kind == "start":
            _, job_id, description, total = event
            if job_id in self.tasks:
                self.progress.remove_task(self.tasks[job_id])
            self.tasks[job_id] = self.progress.add_task(f"{job_id}: {description}", total=total, info="")
        elif kind == "advance":
            _, job_id, n, fields = event
            if job_id in self.tasks:
                info = " ".join(f"{k}={v}" for k, v in fields.items())
                self.progress.update(self.tasks[job_id], advance=n, info=info)
        elif kind == "log":  # warnings and notes go to stderr even with --json (stdout holds the JSON)
            self.console.print(f"  {event[1]}: {event[2]}", markup=False, highlight=False)
        elif kind == "job_done":
            r = event[1]
            if r.id in self.tasks:
                self.progress.remove_task(self.tasks.pop(r.id))
            if not self.quiet or r.action == "failed":
                extra = f"  {r.error}" if r.error else ""
                self.console.print(f"{r.action:>7}  {r.id} ({r.kind}) {r.seconds:.1f}s{extra}", markup=False, highlight=False)


def plain(message: str) -> None:
    print(message, file=sys.stderr)
