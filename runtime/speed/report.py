"""The speed report: what `modelspec bench-device` writes, and when a report counts for a package.

A report (docs/speed.md) is one JSON file per measurement: format ``modelspec.speed/1``, the spec's
name and version, the package's canonical hash, the deployment profile it was measured for (name,
chip, budget), the device (backend, chip, OS, compute units), the prompt slice, when, and the
metrics ``{"value", "n"}`` the catalogue's ``speed.*`` gates read.

A report counts for a package only when it is bound to it: same canonical hash, a profile the spec
has, naming the same chip, measured on that chip, the spec's compute units, measured with CoreML on a device (a report of
the reference interpreter exercises the harness; it is never a device measurement). Anything else
is refused, with the reason. A baseline for the regression metrics is a bound-except-the-package
report of the same chip, profile and compute units, for another package, measured earlier.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compiler.analysis.chips import CHIPS

FORMAT = "modelspec.speed/1"
DEVICE_BACKEND = "coreml"
# metrics a report carries (catalogue names without `speed.`); the regressions are computed against a baseline
MEASURED = ("ttft_p50_ms", "ttft_p90_ms", "tps_p50", "first_tool_call_p50_ms")
REGRESSIONS = {"ttft_p50_regression": ("ttft_p50_ms", +1), "tps_p50_regression": ("tps_p50", -1)}
HOW = ("on a Mac with the profile's hardware run `modelspec bench-device {spec} PACKAGE --profile {profile}` "
       "and commit the report under {folder}/ (docs/speed.md)")


def profile_values(p: Any) -> dict[str, Any]:
    """What a report's profile must still match (a spec Profile or the plan's ProfileP): its chip."""
    return {"chip": p.chip}


def profile_record(p: Any) -> dict[str, Any]:
    """What a report records of its spec profile (the budget and context for the reader)."""
    return {"name": p.name, "memory_gb": float(p.memory_gb), "sessions": p.sessions, "context": p.context, "chip": p.chip}


class SpeedReportError(ValueError):
    """A file that is not a readable speed report."""


@dataclass(frozen=True)
class Binding:
    """What a report must match to count: the package, the spec's profiles, its compute units."""

    package_hash: str
    profiles: dict[str, dict[str, Any]]  # name -> profile_values
    compute_units: str


def load(path: Path) -> dict[str, Any]:
    """A speed report from disk, its shape checked (not yet its binding)."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SpeedReportError(f"{path}: not a readable JSON file ({exc})") from None
    problems = shape_problems(report)
    if problems:
        raise SpeedReportError(f"{path}: not a speed report: {'; '.join(problems)}")
    return report


def shape_problems(report: Any) -> list[str]:
    if not isinstance(report, dict):
        return ["the top level is not an object"]
    if report.get("format") != FORMAT:
        return [f"format is {report.get('format')!r}, expected {FORMAT!r}"]
    out = []
    for key, fields in (("package", ("canonical_hash",)), ("profile", ("name",)),
                        ("device", ("backend", "chip", "os", "compute_units")), ("metrics", ())):
        value = report.get(key)
        if not isinstance(value, dict):
            out.append(f"'{key}' is missing or not an object")
            continue
        out += [f"'{key}.{f}' is missing" for f in fields if not isinstance(value.get(f), str)]
    if not isinstance(report.get("measured_at"), str):
        out.append("'measured_at' is missing")
    for name, m in (report.get("metrics") or {}).items() if isinstance(report.get("metrics"), dict) else ():
        if name in MEASURED and not _is_measurement(m) and not (isinstance(m, dict) and isinstance(m.get("not_run"), str)):
            out.append(f"metric '{name}' is neither {{\"value\": number, \"n\": count}} nor {{\"not_run\": reason}}")
    return out


def _is_measurement(m: Any) -> bool:
    return (isinstance(m, dict) and isinstance(m.get("value"), (int, float)) and not isinstance(m.get("value"), bool)
            and math.isfinite(m["value"]) and isinstance(m.get("n"), int) and m["n"] >= 0)


def refusal(report: dict[str, Any], binding: Binding, *, as_baseline: bool = False) -> str | None:
    """Why this report does not count for the package (None: it does). A baseline need not be
    of this package, and must not be: a package cannot regress against itself."""
    pkg = report["package"]["canonical_hash"]
    if not as_baseline and pkg != binding.package_hash:
        return f"it measured package {pkg[:12]}, this package is {binding.package_hash[:12]}"
    if as_baseline and pkg == binding.package_hash:
        return "it measured this package"
    device = report["device"]
    if device["backend"] != DEVICE_BACKEND:
        return (f"it was measured with {device['backend']!r}, not CoreML on a device: "
                "only `modelspec bench-device` on macOS measures device speed")
    profile = report["profile"]
    name = profile["name"]
    if name not in binding.profiles:
        return f"it measured profile '{name}', which the spec does not have (profiles: {', '.join(sorted(binding.profiles))})"
    want = binding.profiles[name]
    changed = sorted(k for k, v in want.items() if profile.get(k) != v)
    if changed:
        return (f"profile '{name}' changed since it was measured ("
                + ", ".join(f"{k}: {profile.get(k)} then, {want[k]} now" for k in changed) + ")")
    chip = CHIPS.get(want.get("chip") or "")
    if chip is not None and device["chip"] != chip.brand:
        return f"it ran on {device['chip']}, profile '{name}' is an {chip.brand}"
    if device["compute_units"] != binding.compute_units:
        return f"it ran on compute units '{device['compute_units']}', the spec loads with '{binding.compute_units}'"
    return None


@dataclass
class Found:
    """The reports of one folder sorted out for one package."""

    bound: dict[str, dict[str, Any]]  # profile -> the newest report of this package
    paths: dict[str, Path]  # profile -> its file
    baselines: dict[str, dict[str, Any]]  # profile -> the newest earlier report of another package, same chip
    refused: list[str]  # "file: reason" for every report that does not count


def sort_reports(files: list[Path], binding: Binding) -> Found:
    found = Found({}, {}, {}, [])
    loaded: list[tuple[Path, dict[str, Any]]] = []
    for path in sorted(files):
        try:
            loaded.append((path, load(path)))
        except SpeedReportError as exc:
            found.refused.append(str(exc))
    for path, report in loaded:
        why = refusal(report, binding)
        if why is None:
            name = report["profile"]["name"]
            if name not in found.bound or report["measured_at"] > found.bound[name]["measured_at"]:
                found.bound[name], found.paths[name] = report, path
        elif report["package"]["canonical_hash"] == binding.package_hash:
            found.refused.append(f"{path.name}: {why}")
    for path, report in loaded:
        name = report["profile"]["name"]
        current = found.bound.get(name)
        if current is None or refusal(report, binding, as_baseline=True) is not None:
            continue
        if report["device"]["chip"] != current["device"]["chip"] or report["measured_at"] >= current["measured_at"]:
            continue
        if name not in found.baselines or report["measured_at"] > found.baselines[name]["measured_at"]:
            found.baselines[name] = report
    return found


def metric(name: str, report: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """One `speed.<name>` value of one profile's report: a measurement, a regression against the
    baseline (relative; a slowdown is positive), or {"not_run": why}."""
    if name in REGRESSIONS:
        base_name, sign = REGRESSIONS[name]
        if baseline is None:
            return {"not_run": f"no baseline: no earlier report of another package on {report['device']['chip']} "
                               f"for profile '{report['profile']['name']}'"}
        now, then = report["metrics"].get(base_name), baseline["metrics"].get(base_name)
        if not (_is_measurement(now) and _is_measurement(then)) or then["value"] == 0:
            return {"not_run": f"'{base_name}' is missing from the report or its baseline"}
        return {"value": sign * (now["value"] - then["value"]) / then["value"], "n": min(now["n"], then["n"]),
                "baseline": baseline["package"]["canonical_hash"]}
    m = report["metrics"].get(name)
    if not _is_measurement(m):
        return {"not_run": f"the report has no '{name}'" + (f": {m['not_run']}" if isinstance(m, dict) and m.get("not_run") else "")}
    return {"value": float(m["value"]), "n": int(m["n"])}
