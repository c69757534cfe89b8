"""The end of `modelspec run` for a person: the gates, where the outputs are, what to run next.

Built from the run's job results and the reports in the store; only outputs that exist are
listed (a run stopped with `--until` before conversion lists no package). The `--json` answer
of `run` is not this: it stays the machine's.
"""

from __future__ import annotations

from runtime.report.collect import read_json

import shlex
from pathlib import Path
from typing import Any, Iterable

# what a person looks for among a run's outputs: (label, job kinds, output name; None = every output but the report)
OUTPUTS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("package", ("convert",), "package"),
    ("hf folder", ("export_hf", "export-hf", "hf", "hf_export"), None),
    ("release", ("publish",), "manifest"),
)

# what to look at when a hard gate fails, by metric group
FIXES = {
    "eval": "the model falls short on the eval set: train more or better (training.steps, the loss weights, the data); "
            "the samples it got wrong are in {samples}",
    "parity": "the package does not compute what the checkpoint computes: look at the precision islands and the "
              "quantization rules, and the parity report's checks",
    "speculate": "the worker rejects the drafter's tokens: distil longer from the worker (training.steps), check that "
                 "teacher.path is the worker's release, or lower speculative.k; the speculate report names any mismatch",
    "package": "the package is too big: quantize more modules (quantization.weights.rules) or shrink the architecture",
    "speed": "on-device speed comes from a speed report: run `modelspec bench-device` on a Mac with the profile's "
             "hardware and commit the report under speed/<name>/ beside the spec (docs/speed.md); the gate's reason "
             "says which profile lacks one or why a report was refused",
}


def _read(path: str | Path | None) -> dict[str, Any] | None:
    return read_json(Path(path)) if path else None


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return str(value)


def gate_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """The gates report as display rows: outcome, metric, value, op, threshold, policy, note."""
    rows = []
    for g in report.get("gates") or []:
        if not isinstance(g, dict):
            continue
        outcome = str(g.get("outcome", "?"))
        note = str(g.get("reason") or "")
        if g.get("n") is not None and outcome != "not_run":
            note = f"n={g['n']}" + (f"; {note}" if note else "")
        rows.append({"outcome": outcome, "metric": str(g.get("metric", "?")), "value": _num(g.get("value")),
                     "op": str(g.get("op", "")), "threshold": _num(g.get("threshold")), "policy": str(g.get("policy", "")),
                     "note": note})
    return rows


def _gate_where(spec: str, metric: str) -> str:
    """`file:line:col (gates[i])` of the first gate on `metric` in the spec, or '' when it cannot be read."""
    try:
        from compiler.reading.loader import load_file

        doc = load_file(spec)
        for i, g in enumerate(doc.data.get("gates") or []):
            if isinstance(g, dict) and g.get("metric") == metric:
                m = doc.mark(("gates", i))
                return f"{spec}:{m.line}:{m.col} (gates[{i}])"
    except Exception:  # noqa: BLE001 - a location is a convenience
        return ""
    return ""


def _command(*words: str, tail: Iterable[str] = ()) -> str:
    return " ".join(shlex.quote(w) for w in (*words, *tail))


def outputs(results: list[Any]) -> list[tuple[str, str, str]]:
    """(label, job id, path) of the outputs a person looks for, for jobs that ran or were cached."""
    found = []
    for label, kinds, name in OUTPUTS:
        for r in results:
            if r.kind not in kinds or r.action not in ("ran", "cached"):
                continue
            for out_name, path in sorted(r.outputs.items()):
                if (name is None and out_name != "report") or out_name == name:
                    found.append((label, r.id, path))
    return found


def lines(spec: str, results: list[Any], *, spec_name: str, options: list[str], dry_run: bool = False) -> list[str]:
    """The summary printed at the end of `modelspec run` (stderr)."""
    by_id = {r.id: r for r in results}
    out: list[str] = []
    gates = next((r for r in results if r.kind == "gates"), None)
    report = _read(gates.outputs.get("report")) if gates and gates.outputs else None
    if report is not None:
        rows = gate_rows(report)
        out.append(f"gates ({'every hard gate passed' if report.get('passed') else 'a hard gate did not pass'}; "
                   f"report: {gates.outputs['report']}):")
        wm = max([len(r["metric"]) for r in rows] + [6])
        wv = max([len(r["value"]) for r in rows] + [5])
        wt = max([len(r["op"]) + 1 + len(r["threshold"]) for r in rows] + [9])
        for r in rows:
            mark = {"pass": "pass", "fail": "FAIL", "not_run": "not run"}.get(r["outcome"], r["outcome"])
            cond = f"{r['op']} {r['threshold']}"
            out.append(f"  {mark:<7}  {r['metric']:<{wm}}  {r['value']:>{wv}}  {cond:<{wt}}  {r['policy']:<4}  {r['note']}".rstrip())
    elif not dry_run:
        why = "not in this run" if gates is None else ("an upstream job did not complete" if gates.action == "skipped"
                                                       else f"{gates.action}: {gates.error or 'no report'}")
        out.append(f"gates: not run ({why})")
    for label, job_id, path in outputs(results):
        extra = ""
        if label == "package":
            convert = _read(by_id[job_id].outputs.get("report"))
            if convert:
                extra = f"  ({_num(convert.get('size_mb'))} MiB, canonical hash {str(convert.get('canonical_hash', ''))[:12]})"
        if label == "release":
            extra = "  (the manifest; `modelspec publish` installs the release)"
        out.append(f"{label + ':':<10} {path}{extra}")
    logs = [r for r in results if r.log]
    if logs:
        warned = [r for r in logs if r.warnings]
        folder = Path(logs[0].log).parent
        detail = ("warnings: " + ", ".join(f"{r.id} {r.warnings}" for r in warned)) if warned else "no warnings"
        out.append(f"{'logs:':<10} {folder}/  ({detail})")
    out += [f"next:      {line}" for line in next_steps(spec, results, report, options, dry_run, spec_name)]
    return out


def next_steps(spec: str, results: list[Any], gates_report: dict[str, Any] | None, options: list[str],
               dry_run: bool, spec_name: str) -> list[str]:
    """What to run next, most pressing first."""
    if dry_run:
        return [_command("modelspec", "run", spec, tail=options)]
    failed = [r for r in results if r.action == "failed"]
    steps = []
    for r in failed:
        if r.kind == "gates" and gates_report is not None:
            for g in gates_report.get("gates") or []:
                if g.get("policy") == "hard" and g.get("outcome") != "pass":
                    metric = str(g.get("metric", ""))
                    where = _gate_where(spec, metric)
                    samples = next((x.outputs["samples"] for x in results if x.kind == "eval" and "samples" in x.outputs),
                                   "the eval job's samples.jsonl")
                    fix = FIXES.get(metric.split(".", 1)[0], "").format(samples=samples)
                    why = g.get("reason") or g.get("outcome")
                    steps.append(f"gate {metric} ({why}): {fix}" + (f"; the gate is at {where}" if where else ""))
        elif r.kind in ("verify", "parity"):
            package = next((x.outputs.get("package") for x in results if x.kind == "convert" and x.outputs), None)
            steps.append(f"{r.id} failed; its report lists each check: "
                         + (_command("modelspec", "verify", spec, package, tail=options) if package else f"see {r.log or 'the report'}"))
        else:
            steps.append(f"{r.id} failed: read {r.log}, fix it, then {_command('modelspec', 'run', spec, tail=options)}"
                         if r.log else f"{r.id} failed: {_command('modelspec', 'run', spec, tail=options)} after fixing it")
    if failed:
        return steps
    kinds = {r.kind for r in results}
    if "publish" in kinds:
        publish = next(r for r in results if r.kind == "publish")
        if publish.action in ("ran", "cached"):
            return [_command("modelspec", "publish", spec, "--to", f"releases/{spec_name}", tail=options),
                    _command("modelspec", "export-hf", spec, "--to", f"hf/{spec_name}", tail=options)
                    + "   (the student as a Hugging Face folder)",
                    _command("modelspec", "report", spec, tail=options) + "   (the run as one HTML page)"]
    if any(r.action == "skipped" for r in results):
        return [_command("modelspec", "run", spec, tail=options)]
    return [_command("modelspec", "run", spec, tail=options) + "   (the rest of the plan, up to publish)",
            _command("modelspec", "report", spec, tail=options) + "   (what ran so far, as one HTML page)"]

