"""Terminal reporting: one line per job and rich progress bars for long jobs.

rich is imported on the first progress bar, so a run where everything is cached stays fast.
Lines are never wrapped (rich would fold them at 80 columns when stderr is a file or a pipe);
what the libraries say while a job runs is in the job's log (runtime.joblog), and the job's
line says how many warnings it holds and where.
"""

from __future__ import annotations

import sys


class Reporter:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _bars(self):
        if self.progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[info]}", markup=False),
                                     console=Console(stderr=True, soft_wrap=True), transient=True, disable=self.quiet)
            self.progress.__enter__()
        return self.progress

    def _print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def __call__(self, event: tuple) -> None:
        kind = event[0]
        if kind == "start":
            _, job_id, description, total = event
            bars = self._bars()
            if job_id in self.tasks:
                bars.remove_task(self.tasks[job_id])
            self.tasks[job_id] = bars.add_task(f"{job_id}: {description}", total=total, info="")
        elif kind == "advance":
            _, job_id, n, fields = event
            if job_id in self.tasks:
                info = " ".join(f"{k}={v}" for k, v in fields.items())
                self.progress.update(self.tasks[job_id], advance=n, info=info)
        elif kind == "log":  # warnings and notes go to stderr even with --json (stdout holds the JSON)
            self._print(f"  {event[1]}: {event[2]}")
        elif kind == "job_done":
            r = event[1]
            if r.id in self.tasks:
                self.progress.remove_task(self.tasks.pop(r.id))
            if not self.quiet or r.action == "failed":
                self._print(job_line(r))


def job_line(r) -> str:
    """`    ran  convert (convert) 9.3s  (12 warnings in <log>)`; a job that broke points at its log."""
    line = f"{r.action:>7}  {r.id} ({r.kind}) {r.seconds:.1f}s"
    if r.error:
        line += f"  {r.error}"
    log = getattr(r, "log", None)
    warned = getattr(r, "warnings", None)
    if log and r.action == "failed" and not r.outputs:  # it broke (a negative verdict keeps its outputs: its report says why)
        line += f"  (log: {log})"
    elif log and warned:
        line += f"  ({warned} warning{'s' if warned != 1 else ''} in {log})"
    return line


def plain(message: str) -> None:
    print(message, file=sys.stderr)
