"""Shared test helpers: a real `JobContext` that records its progress events."""

from __future__ import annotations

from pathlib import Path

from runtime.context import JobContext

SPECS = Path(__file__).resolve().parents[2] / "specs"


def Ctx(spec_dir: Path = SPECS) -> JobContext:  # noqa: N802 (reads like the class it stands for)
    """A JobContext whose events are kept as (kind, *payload) in `ctx.events`, job id dropped."""
    events: list[tuple] = []
    ctx = JobContext(job_id="test", spec_dir=Path(spec_dir), work_dir=Path(spec_dir), provenance={},
                     emit=lambda event: events.append((event[0], *event[2:])))
    ctx.events = events  # type: ignore[attr-defined]
    return ctx
