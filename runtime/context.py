"""What a job receives besides its typed params: where it runs and how it reports progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .plan import CPU_JOB


@dataclass
class JobContext:
    job_id: str
    spec_dir: Path  # relative paths in params resolve against it
    work_dir: Path  # persistent scratch that survives a killed run (checkpoints)
    provenance: dict[str, Any]  # spec hash, job fingerprint and key, upstream fingerprints and keys
    cache_dir: Path | None = None  # content-addressed cache shared by every job of this kind
    force: bool = False
    spec_file: Path | None = None  # the spec file, to point report lines at file:line:col
    emit: Callable[[tuple], None] = field(default=lambda event: None)
    # placement from the plan (compiler.planning.params.ResourcesP as JSON): device, nodes, nproc, strategy
    resources: dict[str, Any] = field(default_factory=lambda: dict(CPU_JOB))
    remote_dir: Path | None = None  # the store's copies of remote inputs (runtime/remote)
    external: dict[str, str] = field(default_factory=dict)  # external input -> the version its job was keyed with

    def progress(self, description: str, total: int | None = None) -> Callable[..., None]:
        """Start a progress bar; call the result with `advance=` and any fields (e.g. losses)."""
        self.emit(("start", self.job_id, description, total))

        def update(advance: int = 1, **fields: Any) -> None:
            self.emit(("advance", self.job_id, advance, {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in fields.items()}))

        return update

    def log(self, message: str) -> None:
        """A note for the person running the job: printed on the console and kept in the job's log."""
        self.emit(("log", self.job_id, message))

    def detail(self, message: str) -> None:
        """A note only the job's log keeps (what a step did; the console shows one line per job)."""
        self.emit(("detail", self.job_id, message))

    def resolve(self, path: str) -> Path:
        """A path from params: a URI fetched into the store, relative paths against the spec (runtime/remote)."""
        from .remote import local_path

        return local_path(self, path)
