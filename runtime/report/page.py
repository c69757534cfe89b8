"""`modelspec report`: the run of one spec as one self-contained HTML page.

Sections: the gates, training curves (loss per term, learning rate, gradient-balance norms) for
every job that writes `metrics.jsonl`, eval metrics per sample kind, parity SNR per function,
package size by module under the quantization recipe, and the jobs. Rendered with jinja2's
`ImmutableSandboxedEnvironment`, autoescape on (spec strings appear on the page).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from markupsafe import Markup

from runtime.summary import gate_rows

from . import svg
from .collect import RunData, metric_rows, size_by_module, training_series
from .template import PAGE


def _fmt(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v:.{digits}g}" if math.isfinite(float(v)) else str(v)
    return str(v)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _metric_value(raw: Any) -> tuple[float | None, Any]:
    if isinstance(raw, dict):
        v = raw.get("value")
        return (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None), raw.get("n")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw), None
    return None, None


# -- sections --------------------------------------------------------------------------------
def gates_section(data: RunData) -> dict[str, Any]:
    jobs = data.of_kind("gates")
    if not jobs:
        return {"rows": [], "status": "no gates job in this plan"}
    job = jobs[0]
    report = job.report()
    if report is None:
        return {"rows": [], "status": job.status if job.ran else "the gates job has not run"}
    return {"rows": gate_rows(report), "passed": bool(report.get("passed")), "status": job.status}


def _job_facts(job: Any, rows: list[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[str]]:
    report = job.report() or {}
    facts = [("steps", f"{int(rows[0]['step'])}..{int(rows[-1]['step'])}" if rows else "none"), ("status", job.status)]
    final = report.get("final_loss")
    if isinstance(final, dict) and isinstance(final.get("total"), (int, float)):
        facts.append(("final loss", _fmt(final["total"])))
    for key in sorted(report):
        value = report[key]
        if (key.startswith("val_") or key == "seconds_per_step") and isinstance(value, (int, float)) and not isinstance(value, bool):
            facts.append((key, _fmt(value)))
    if isinstance(report.get("grad_balance_alerts"), int):
        facts.append(("grad-balance alerts", str(report["grad_balance_alerts"])))
    first = report.get("grad_balance_first_alerts")
    alerts = [", ".join(f"{k}={_fmt(v)}" for k, v in a.items()) if isinstance(a, dict) else str(a)
              for a in (first if isinstance(first, list) else [])][:10]
    return facts, alerts


def training_section(data: RunData) -> list[dict[str, Any]]:
    """One block per model: the student's `train` and `qat` share one global schedule, so their curves
    are drawn as one (a marker where QAT starts); any other job writing metrics.jsonl gets its own."""
    logged = [j for j in data.jobs.values() if "metrics" in data.plan.job(j.id).outputs]
    student = [j for j in logged if j.kind in ("train", "qat")]
    blocks = ([student] if student else []) + [[j] for j in logged if j not in student]
    out = []
    for jobs in blocks:
        title = " + ".join(f"{j.id}" for j in jobs)
        per_job = [(j, metric_rows(j.output("metrics"))) for j in jobs]
        rows = sorted((r for _, rs in per_job for r in rs), key=lambda r: r["step"])
        parts = [{"job": j.id, "kind": j.kind, "facts": _job_facts(j, rs)[0], "alerts": _job_facts(j, rs)[1]}
                 for j, rs in per_job if j.ran]
        missing = [j.id for j in jobs if not j.ran]
        if not rows:
            out.append({"title": title, "charts": [], "parts": parts,
                        "status": "not run" if not parts else "no rows in metrics.jsonl"})
            continue
        markers = [(float(rs[0]["step"]), f"{j.id} starts") for j, rs in per_job[1:] if rs]
        series = training_series(rows)
        charts: list[Markup] = [
            svg.line_chart(series["loss"], title="loss per term", y_label="loss", markers=markers, width=1080, height=340),
            svg.line_chart(series["lr"], title="learning rate", y_label="lr", log_y=False, markers=markers),
            svg.line_chart(series["grad_norm_by_loss"], title="gradient norm by loss term (at the logits)", y_label="norm",
                           markers=markers),
        ]
        if series["val"]:
            charts.append(svg.line_chart(series["val"], title="validation: loss per term and token accuracy", y_label="value",
                                         markers=markers, width=1080))
        out.append({"title": title, "charts": charts, "parts": parts,
                    "status": ("not run: " + ", ".join(missing)) if missing else "done"})
    return out


def _metric_kind(metric: str, values: list[float]) -> str:
    """rate | count | other: from the gate catalogue (eval.<metric>), else a rate when every value is in [0, 1]."""
    from compiler.analysis.catalogue import CATALOGUE

    known = CATALOGUE.get(f"eval.{metric}")
    if known is not None:
        return known.kind if known.kind in ("rate", "count") else "other"
    return "rate" if values and all(0.0 <= v <= 1.0 for v in values) and not metric.endswith("_mean") else "other"


def _heat(value: float | None, kind: str) -> str:
    """A cell's background: rates from red (0) to green (1); a count of bad events green only at 0."""
    if value is None or kind == "other":
        return "transparent"
    if kind == "count":
        return "#e3f4e8" if value == 0 else "#fde7e7"
    v = max(0.0, min(1.0, value))
    return f"hsl({120 * v:.0f}, 70%, 88%)"


def eval_section(data: RunData) -> dict[str, Any]:
    jobs = data.of_kind("eval")
    if not jobs:
        return {"table": [], "status": "no eval job in this plan"}
    job = jobs[0]
    report = job.report()
    if report is None:
        return {"table": [], "status": "not run"}
    by_kind = report.get("by_kind") if isinstance(report.get("by_kind"), dict) else {}
    overall = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
    metrics = sorted({m for kind in by_kind.values() if isinstance(kind, dict) for m in kind} | set(overall))
    rows = [("all", overall), *sorted(by_kind.items())]
    kinds = {m: _metric_kind(m, [v for _, values in rows if (v := _metric_value((values or {}).get(m))[0]) is not None])
             for m in metrics}
    table = []
    for kind, values in rows:
        cells = []
        for m in metrics:
            v, n = _metric_value((values or {}).get(m))
            cells.append({"text": _fmt(v, 3) if v is not None else "-", "n": n if n is not None else "-",
                          "color": _heat(v, kinds[m])})
        table.append({"kind": kind, "cells": cells})
    charts = []
    for m in metrics:
        if kinds[m] == "count":
            continue
        items = []
        for kind, values in sorted(by_kind.items()):
            v, n = _metric_value((values or {}).get(m))
            if v is not None:
                items.append((kind, v, f"n={n}" if n is not None else ""))
        if items:
            charts.append(svg.bar_chart(items, title=f"eval: {m} by sample kind", width=560))
    counts = report.get("counts") if isinstance(report.get("counts"), dict) else {}
    return {"table": table, "metrics": metrics, "charts": charts, "status": job.status, "samples": counts.get("samples", "?")}


def parity_section(data: RunData) -> dict[str, Any]:
    jobs = data.of_kind("parity")
    if not jobs:
        return {"rows": [], "status": "no parity job in this plan"}
    rows, items = [], []
    for job in jobs:
        report = job.report()
        if report is None:
            rows.append({"function": job.id, "status": "not run", "snr": "-", "quant": "-", "fp16": "-", "top1": "-", "checks": []})
            continue
        metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
        fn = str(report.get("function") or job.id.removeprefix("parity-"))
        vals = {k: _metric_value(metrics.get(k))[0] for k in ("snr_db", "quant_snr_db", "fp16_snr_db", "top1_agreement")}
        checks = [{"name": str(c.get("name")), "passed": bool(c.get("passed")), "message": str(c.get("message", ""))}
                  for c in report.get("checks") or [] if isinstance(c, dict)]
        rows.append({"function": fn, "status": job.status, "snr": _fmt(vals["snr_db"]), "quant": _fmt(vals["quant_snr_db"]),
                     "fp16": _fmt(vals["fp16_snr_db"]), "top1": _fmt(vals["top1_agreement"]), "checks": checks})
        for key, label in (("snr_db", "conversion"), ("fp16_snr_db", "fp16"), ("quant_snr_db", "vs checkpoint")):
            if vals[key] is not None:
                items.append((f"{fn} · {label}", vals[key], ""))
    threshold = next(((g.value, f"gate {g.op} {g.value:g} dB") for g in _spec_gates(data) if g.metric == "parity.snr_db"), None)
    charts = [svg.bar_chart(items, title="parity: SNR per function (dB)", unit="dB", threshold=threshold)] if items else []
    return {"rows": rows, "charts": charts, "status": "not run" if not items else "done"}


def _spec_gates(data: RunData) -> list[Any]:
    from types import SimpleNamespace

    gates = data.contracts.get("contracts/gates.json") or {}
    out = []
    for g in gates.get("gates") or []:
        if isinstance(g, dict) and isinstance(g.get("value"), (int, float)):
            out.append(SimpleNamespace(metric=g.get("metric"), op=g.get("op", ""), value=float(g["value"])))
    return out


def size_section(data: RunData) -> dict[str, Any]:
    groups = size_by_module(data.contracts.get("contracts/quantization.json"))
    if not groups:
        return {"rows": [], "status": "the plan has no quantization contract"}
    total = sum(g["bytes"] for g in groups) or 1.0
    rows = [{**g, "bytes_text": _human_bytes(g["bytes"]), "share": f"{100 * g['bytes'] / total:.1f}%"} for g in groups]
    facts = [("weights under the recipe", _human_bytes(total))]
    budget = data.contracts.get("contracts/budget.json") or {}
    if isinstance(budget.get("weight_bytes_dense_fp16"), (int, float)):
        facts.append(("dense fp16", _human_bytes(float(budget["weight_bytes_dense_fp16"]))))
    convert = next((j for j in data.of_kind("convert")), None)
    report = convert.report() if convert else None
    if report and isinstance(report.get("size_mb"), (int, float)):
        facts.append(("package on disk", f"{report['size_mb']:.3f} MiB"))
    else:
        facts.append(("package on disk", "not converted yet"))
    gate = next((g for g in _spec_gates(data) if g.metric == "package.size_mb"), None)
    if gate is not None:
        facts.append(("size gate", f"{gate.op} {gate.value:g} MiB"))
    items = [(f"{g['group']}" + (f" ×{g['count']}" if g["count"] > 1 else ""), g["bytes"] / 1024, g["dtypes"]) for g in groups]
    chart = svg.bar_chart(items, title="weight bytes per module under the recipe (KiB)", unit="KiB")
    return {"rows": rows, "facts": facts, "charts": [chart], "status": "done"}


def jobs_section(data: RunData) -> list[dict[str, Any]]:
    out = []
    for job in data.jobs.values():
        seconds = (job.record or {}).get("seconds")
        css = "status-done" if job.status == "done" else ("status-stale" if job.ran else "status-not")
        out.append({"id": job.id, "kind": job.kind, "status": job.status, "css": css, "seconds": _fmt(seconds, 3) if job.ran else "",
                    "reasons": "; ".join(job.reasons) if job.state != "up_to_date" else ""})
    return out


def render(data: RunData, description: str = "") -> str:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    context = {
        "title": f"{data.plan.name} {data.plan.version}: run report",
        "spec": data.spec, "version": data.plan.version, "spec_hash": data.plan.spec_hash, "store": str(data.store),
        "written": time.strftime("%Y-%m-%d %H:%M:%S"), "description": description,
        "gates": gates_section(data), "training": training_section(data), "eval": eval_section(data),
        "parity": parity_section(data), "size": size_section(data), "jobs": jobs_section(data),
    }
    return env.from_string(PAGE).render(**context)


def write(data: RunData, out: Path, description: str = "") -> Path:
    import os
    import tempfile

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = render(data, description)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".report-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(html)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for secrets; a report is read by people
    os.replace(tmp, out)
    return out
