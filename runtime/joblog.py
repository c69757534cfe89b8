"""A job's log file: what the libraries a job calls say goes there, not to the console.

While a job runs (`runtime.worker.run_job`), `JobLog` sends into `<store>/logs/<spec>/<job>.log`:

- Python warnings (torch FutureWarnings, numpy overflow RuntimeWarnings inside coremltools'
  passes, ...), under the usual filters (once per place it was raised), with that place; they
  are counted;
- `logging` records that reach the root logger (coremltools logs through `logging`; the root's
  level, WARNING by default, decides); WARNING and above are counted;
- everything written to file descriptors 1 and 2: Python prints, C++ library output, the
  processes the job starts (torchrun ranks), a crash's faulthandler dump;
- the job's own notes (`ctx.log`).

The file is rewritten each time the job runs and kept after it finished or failed (the store's
`logs/` folder is not part of any job's outputs, so it never changes a cache key). The console
line of the job says how many warnings its log holds and where it is.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import IO, Any


class _Counter(logging.Handler):
    def __init__(self, log: "JobLog"):
        super().__init__(logging.DEBUG)
        self.log = log
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.WARNING:
                self.log.warnings += 1
            self.log.write(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never fail the job
            self.handleError(record)


class JobLog:
    """Context manager: while open, warnings, logging and fds 1 and 2 go to `path` (None: a no-op)."""

    def __init__(self, path: str | Path | None, job_id: str = ""):
        self.path = Path(path) if path else None
        self.job_id = job_id
        self.warnings = 0
        self._fh: IO[str] | None = None
        self._saved_fds: dict[int, int] = {}
        self._catch: Any = None
        self._handler: _Counter | None = None
        self._streams: tuple[Any, Any] = (sys.stdout, sys.stderr)

    def write(self, text: str) -> None:
        if self._fh is not None:
            self._fh.write(text.rstrip("\n") + "\n")
            self._fh.flush()

    def note(self, message: str) -> None:
        """A note of the job itself (ctx.log)."""
        self.write(f"note: {message}")

    def _showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warnings += 1
        self.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n"))

    def __enter__(self) -> "JobLog":
        if self.path is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"# modelspec job {self.job_id}, pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n",
                             encoding="utf-8")
        # append mode: every write (ours and the redirected fds') lands at the end, in order
        self._fh = open(self.path, "a", encoding="utf-8", errors="replace", buffering=1)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        for fd in (1, 2):
            try:
                self._saved_fds[fd] = os.dup(fd)
                os.dup2(self._fh.fileno(), fd)
            except OSError:
                self._saved_fds.pop(fd, None)
        self._streams = (sys.stdout, sys.stderr)  # replaced too: they may not be fds 1 and 2 (pytest's capture)
        sys.stdout = sys.stderr = self._fh
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        # the filters stay as they are (entering resets the once-per-place registries, so a warning
        # already shown in an earlier job of this worker process is written again for this job)
        warnings.showwarning = self._showwarning
        self._handler = _Counter(self)  # at the root's level (WARNING unless configured): what would have reached stderr
        logging.getLogger().addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.path is None:
            return
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        if self._catch is not None:
            self._catch.__exit__(*exc)
        sys.stdout, sys.stderr = self._streams
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        for fd, saved in self._saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved_fds.clear()
        if exc[0] is not None:
            self.write(f"# failed: {exc[0].__name__}: {exc[1]}")
        self.write(f"# ended {time.strftime('%Y-%m-%d %H:%M:%S')}, {self.warnings} warning(s)")
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def log_path(store_root: str | Path, spec_name: str, job_id: str) -> Path:
    """Where a job's log lives: `<store>/logs/<spec>/<job>.log` (names are validated plan ids)."""
    for part in (spec_name, job_id):
        if not part or "/" in part or part in (".", "..") or part.startswith("."):
            raise ValueError(f"unsafe path segment {part!r}")
    return Path(store_root) / "logs" / spec_name / f"{job_id}.log"
