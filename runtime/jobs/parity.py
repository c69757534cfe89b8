"""The `parity` job: one package function executed by the reference interpreter against torch.

Writes `report.json` (metrics for the `parity.*` gates, the named checks) and `golden.npz`
(inputs and expected outputs, for a later run of the same vectors with CoreML on a Mac).
A failed check (unknown op, non-causal, decode inconsistent with prefill, weights not the
checkpoint's, non-finite values in fp16) is a negative verdict: the report is kept, the run fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compiler.planning.params import ParityParams


def run(params: ParityParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict[str, Any]:
    from runtime.verify.parity import measure

    checkpoint = next(outs["checkpoint"] for outs in inputs.values() if "checkpoint" in outs)
    package = Path(inputs["convert"]["package"])
    ctx.detail(f"interpreting {params.function.name} of {package.name} against torch")
    report, golden = measure(package, params.function, Path(checkpoint), samples=params.samples,
                             decode_steps=params.decode_steps, seed=params.seed, lengths=params.lengths or None,
                             positions=params.positions)
    report["provenance"] = ctx.provenance
    out = Path(out)
    with open(out / "golden.npz", "wb") as fh:
        np.savez_compressed(fh, **golden)
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2, default=float) + "\n", encoding="utf-8")
    failed = [c for c in report["checks"] if not c["passed"]]
    for c in report["checks"]:  # failures on the console too; the passed checks only in the job's log
        (ctx.detail if c["passed"] else ctx.log)(f"{'ok  ' if c['passed'] else 'FAIL'} {c['name']}: {c['message']}")
    verdict = {"ok": not failed, "message": "; ".join(f"{c['name']}: {c['message']}" for c in failed)}
    flat = {k: v["value"] for k, v in report["metrics"].items() if isinstance(v, dict) and "value" in v}
    return {**flat, "_verdict": verdict}
