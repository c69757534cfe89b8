"""The `gates` job: evaluates the spec's gates against what the upstream jobs measured.

A gate's metric `<group>.<name>` (compiler/analysis/catalogue.py) is produced by jobs of one kind; its
value is read from each producer's ``report.json``: ``report["metrics"][name]`` (a number or
``{"value", "n"}`` or ``{"not_run": reason}``), else ``report[name]``. Several producers of
one metric (one parity job per function) are combined conservatively: the worst value counts
(the minimum for ``>=``/``>``, the maximum otherwise), n is summed, and any producer that could
not measure it makes the gate ``not_run``.

Outcome per gate: ``pass``, ``fail`` or ``not_run`` (with the reason: no producer in this plan,
the producer could not measure it, or n below ``min_n``).

``speed.*`` metrics come from no job: they are measured on a Mac by `modelspec bench-device` and
read from the speed reports committed beside the spec (``params.speed_reports``, an external input,
so a new report re-runs this job). Only reports bound to this package, one of the spec's profiles
and its compute units count (runtime/speed/report.py); each profile needs one, and the gate takes
the worst profile. Without one the gate is ``not_run`` and says how to produce it.
The report lists per gate the metric, value, n, op, threshold, policy and outcome. A ``hard``
gate that did not pass makes the job's verdict a failure: the report is still written and
kept, the run exits 1 and nothing downstream (publish) runs. ``warn`` gates never fail it.
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any

from compiler.planning.params import GateP, GatesParams
from runtime.speed import report as speed

from .tokenizer import write_report

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


def _lookup(report: dict, name: str) -> dict[str, Any]:
    metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
    raw = metrics.get(name, report.get(name))
    if raw is None:
        return {"not_run": f"the producer's report has no '{name}'"}
    if isinstance(raw, bool) or not isinstance(raw, (int, float, dict)):
        return {"not_run": f"'{name}' in the producer's report is not a number"}
    if isinstance(raw, dict):
        if raw.get("not_run"):
            return {"not_run": str(raw["not_run"])}
        if not isinstance(raw.get("value"), (int, float)) or isinstance(raw.get("value"), bool):
            return {"not_run": f"'{name}' has no numeric value in the producer's report"}
        return {"value": float(raw["value"]), "n": raw.get("n")}
    return {"value": float(raw), "n": None}


def _measure(gate: GateP, reports: dict[str, dict]) -> dict[str, Any]:
    name = gate.metric.split(".", 1)[1]
    if not reports:
        return {"not_run": f"no '{gate.producer}' job in this plan produces it"}
    found = {job: _lookup(rep, name) for job, rep in sorted(reports.items())}
    missing = [f"{job}: {m['not_run']}" for job, m in found.items() if "not_run" in m]
    if missing:
        return {"not_run": "; ".join(missing)}
    values = [m["value"] for m in found.values()]
    worst = min(values) if gate.op in (">=", ">") else max(values)
    ns = [m["n"] for m in found.values() if m["n"] is not None]
    return {"value": worst, "n": sum(ns) if ns else None, "by_job": {j: m["value"] for j, m in found.items()}}


def speed_measure(gate: GateP, found: speed.Found, profiles: list[str], how: str) -> dict[str, Any]:
    """A speed gate over the spec's profiles: each needs a bound report; the worst profile counts."""
    name = gate.metric.split(".", 1)[1]
    if not profiles:
        return {"not_run": "the plan names no deployment profile for the speed reports (recompile the spec)"}
    missing = [p for p in profiles if p not in found.bound]
    if missing:
        why = f"no speed report for this package and profile {', '.join(repr(p) for p in missing)}"
        if found.refused:
            why += f" (refused: {'; '.join(found.refused)})"
        return {"not_run": f"{why}; {how.format(profile=missing[0])}"}
    by = {p: speed.metric(name, found.bound[p], found.baselines.get(p)) for p in profiles}
    bad = [f"{p}: {m['not_run']}" for p, m in by.items() if "not_run" in m]
    if bad:
        return {"not_run": "; ".join(bad)}
    values = [m["value"] for m in by.values()]
    worst = min(values) if gate.op in (">=", ">") else max(values)
    return {"value": worst, "n": min(m["n"] for m in by.values()), "by_job": {p: m["value"] for p, m in by.items()}}


def evaluate(gate: GateP, reports: dict[str, dict], measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """One gate's row; `measured` replaces the lookup in the producers' reports (speed gates)."""
    m = measured if measured is not None else _measure(gate, reports)
    row = {"metric": gate.metric, "op": gate.op, "threshold": gate.value, "policy": gate.policy, "min_n": gate.min_n,
           "value": m.get("value"), "n": m.get("n")}
    if "by_job" in m and len(m["by_job"]) > 1:
        row["by_job"] = m["by_job"]
    if "not_run" in m:
        return row | {"outcome": "not_run", "reason": m["not_run"]}
    if gate.min_n is not None and (m["n"] is None or m["n"] < gate.min_n):
        return row | {"outcome": "not_run", "reason": f"measured on n={m['n']} samples, the gate needs min_n={gate.min_n}"}
    ok = OPS[gate.op](m["value"], gate.value)
    return row | {"outcome": "pass" if ok else "fail",
                  "reason": "" if ok else f"{m['value']:.6g} is not {gate.op} {gate.value:g}"}


def _reports(inputs: dict[str, dict[str, Path]]) -> dict[str, dict[str, dict]]:
    """producer kind -> {job id: report}; job ids name their kind (`parity-decode` is a parity job)."""
    out: dict[str, dict[str, dict]] = {}
    for job_id, outputs in inputs.items():
        path = outputs.get("report")
        if path is None:
            continue
        kind = job_id.split("-", 1)[0]
        out.setdefault(kind, {})[job_id] = json.loads(Path(path).read_text(encoding="utf-8"))
    return out


def _speed(params: GatesParams, package_hash: str | None, ctx: Any) -> tuple[speed.Found, str, list[str]]:
    spec = ctx.spec_file.name if getattr(ctx, "spec_file", None) else "SPEC"
    how = speed.HOW.format(spec=spec, folder=params.speed_reports, profile="{profile}")
    folder = ctx.resolve(params.speed_reports) if params.speed_reports else None
    files = sorted(folder.rglob("*.json")) if folder is not None and folder.is_dir() else []
    binding = speed.Binding(package_hash or "", {p.name: speed.profile_values(p) for p in params.profiles}, params.compute_units)
    return speed.sort_reports(files, binding), how, [p.name for p in params.profiles]


def run(params: GatesParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict:
    reports = _reports(inputs)
    package = reports.get("convert", {}).get("convert", {})
    rows, found = [], None
    for g in params.gates:
        if g.producer == "speed":
            if found is None:
                found, how, profiles = _speed(params, package.get("canonical_hash"), ctx)
            rows.append(evaluate(g, {}, speed_measure(g, found, profiles, how)))
        else:
            rows.append(evaluate(g, reports.get(g.producer, {})))
    hard = [r for r in rows if r["policy"] == "hard" and r["outcome"] != "pass"]
    warned = [r for r in rows if r["policy"] == "warn" and r["outcome"] != "pass"]
    report = {"gates": rows, "passed": not hard, "hard_not_passed": [r["metric"] for r in hard],
              "warnings": [r["metric"] for r in warned], "package_hash": package.get("canonical_hash"),
              "provenance": ctx.provenance}
    if found is not None:
        report["speed_reports"] = {"bound": {p: str(path) for p, path in found.paths.items()},
                                   "baselines": {p: r["package"]["canonical_hash"] for p, r in found.baselines.items()},
                                   "refused": found.refused}
    write_report(out, report)
    for r in warned:
        ctx.log(f"warn gate {r['metric']} {r['outcome']}: {r['reason']}")
    counts = {o: sum(r["outcome"] == o for r in rows) for o in ("pass", "fail", "not_run")}
    verdict = {"ok": not hard, "message": "hard gates not passed: " + "; ".join(
        f"{r['metric']} {r['outcome']} ({r['reason']})" for r in hard)} if hard else {"ok": True, "message": ""}
    return {**counts, "passed": not hard, "_verdict": verdict}
