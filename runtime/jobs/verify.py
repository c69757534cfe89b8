"""The `verify` job: the converted package checked against the spec's contracts (runtime/verify).

A package that does not match is a negative verdict, not a crash: the report (every mismatch,
expected against observed, with the spec line it comes from, plus the whole observed contract)
is kept, the run fails and nothing downstream (gates, publish) runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.planning.params import VerifyParams


def _doc(ctx: Any) -> Any:
    spec_file = getattr(ctx, "spec_file", None)
    if not spec_file or not Path(spec_file).is_file():
        return None
    from compiler.reading.loader import load_file

    try:
        return load_file(str(spec_file))
    except Exception:  # noqa: BLE001 - line numbers are a convenience; the check itself does not need them
        return None


def run(params: VerifyParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict[str, Any]:
    from runtime.verify.gate import summary_lines, verify

    package = Path(inputs["convert"]["package"])
    tokenizer = Path(inputs["tokenizer"]["tokenizer"]) if "tokenizer" in inputs else None
    spec_hash = (ctx.provenance.get("spec") or {}).get("hash", "")
    convert_fp = ((ctx.provenance.get("upstream") or {}).get("convert") or {}).get("fingerprint")
    report = verify(params, package, spec_hash=spec_hash, tokenizer=tokenizer, convert_fingerprint=convert_fp, doc=_doc(ctx))
    report["provenance"] = ctx.provenance
    (Path(out) / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    lines = summary_lines(report)
    for line in lines:
        ctx.log(line)
    verdict = {"ok": report["passed"], "message": "" if report["passed"] else
               f"{len(report['mismatches'])} contract mismatch(es):\n  " + "\n  ".join(lines)}
    return {"passed": report["passed"], "mismatches": len(report["mismatches"]), "size_mb": report["observed"]["size_mb"],
            "_verdict": verdict}
