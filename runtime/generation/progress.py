"""The generate job's progress file: how many prompts are finished, for `modelspec status`.

Standard library only: `status` reads it without importing the job (torch, transformers).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

PROGRESS_FILE = "progress.json"  # in the job's work dir: kept after a kill


class Progress:
    """Prompts whose transcript is finished (from the cache or just now), written at most once a second, atomically."""

    def __init__(self, path: Path, total: int) -> None:
        self.path, self.total, self.finished, self._last = path, total, 0, 0.0
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, n: int) -> None:
        self.finished += n
        if time.monotonic() - self._last >= 1.0:
            self._write()

    def finish(self, finished: int) -> None:
        self.finished = finished
        self._write()

    def _write(self) -> None:
        self._last = time.monotonic()
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"prompts": self.total, "finished": self.finished, "updated": time.time()}), encoding="utf-8")
        tmp.replace(self.path)


def read_progress(work_dir: Path) -> dict | None:
    try:
        return json.loads((Path(work_dir) / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
