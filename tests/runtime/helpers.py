"""Shared test helpers: a real `JobContext` that records its progress events."""

from __future__ import annotations

from pathlib import Path

from runtime.context import JobContext

SPECS = Path(__file__).resolve().parents[2] / "specs"


def Ctx(spec_dir: Path = SPECS, work_dir: Path | None = None, cache_dir: Path | None = None,
        provenance: dict | None = None, force: bool = False) -> JobContext:  # noqa: N802 (reads like the class)
    """A JobContext whose events are kept as (kind, *payload) in `ctx.events`, job id dropped.

    Jobs that write scratch or cache files need `work_dir` / `cache_dir` (pass `tmp_path` folders)."""
    events: list[tuple] = []
    ctx = JobContext(job_id="test", spec_dir=Path(spec_dir), work_dir=Path(work_dir) if work_dir else Path("/nonexistent-work-dir"),
                     cache_dir=Path(cache_dir) if cache_dir else None, provenance=provenance or {}, force=force,
                     emit=lambda event: events.append((event[0], *event[2:])))
    ctx.events = events  # type: ignore[attr-defined]
    return ctx


def store_records(store: Path) -> dict[str, dict[str, str]]:
    """job id -> {output name: sha256} for every completion record in a store."""
    import json

    out = {}
    for path in Path(store).glob("jobs/*/*/_complete.json"):
        rec = json.loads(path.read_text())
        out[rec["job"]] = {name: o["sha256"] for name, o in rec["outputs"].items()}
    return out
