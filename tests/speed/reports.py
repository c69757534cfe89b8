"""Speed reports as `modelspec bench-device` writes them on a Mac, for the binding and gate tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.speed.report import FORMAT, Binding

PROFILES = {"m1-max-64g": {"chip": "apple-m1-max"}, "m3-pro-36g": {"chip": "apple-m3-pro"}}
BINDING = Binding("a" * 64, PROFILES, "all")


def report(package: str = "a" * 64, profile: str = "m1-max-64g", chip: str | None = "Apple M1 Max", *, ttft: float = 80.0,
           tps: float = 30.0, when: str = "2026-12-01T10:00:00+00:00", backend: str = "coreml", units: str = "all",
           n: int = 50, **profile_values: Any) -> dict[str, Any]:
    values = dict(memory_gb=64.0, sessions=2, context=256, **PROFILES.get(profile, PROFILES["m1-max-64g"]))
    values.update(profile_values)
    if "chip_id" in values:  # the profile's chip as the report recorded it
        values["chip"] = values.pop("chip_id")
    if chip is None:  # measured before the profile named its chip
        values["chip"], chip = None, "Apple M1 Max"
    return {
        "format": FORMAT, "spec": {"name": "toy-worker", "version": "1.0.0", "hash": "s" * 64},
        "package": {"canonical_hash": package, "name": "toy-worker.mlpackage"},
        "profile": {"name": profile, **values},
        "device": {"backend": backend, "chip": chip, "os": "macOS 15.2", "compute_units": units},
        "prompts": {"source": "data/toy/eval.jsonl", "sha256": "e" * 64, "n": n, "ids": [], "skipped": 0,
                    "max_new_tokens": 64, "warmup": 2},
        "load_s": 1.5, "measured_at": when,
        "metrics": {"ttft_p50_ms": {"value": ttft, "n": n}, "ttft_p90_ms": {"value": ttft * 1.5, "n": n},
                    "tps_p50": {"value": tps, "n": n}, "first_tool_call_p50_ms": {"value": ttft * 10, "n": n - 10}},
    }


def write(folder: Path, name: str, rep: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(rep))
    return path
