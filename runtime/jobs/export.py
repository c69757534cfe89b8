"""The export job: torch.export of one package function of the (QAT) student, checked.

Reads the one upstream output named `checkpoint` (qat when the spec has QAT, else train), wraps
the student as the contract function (`runtime.export.wrappers`), exports it in fp32 (conversion
sets the compute precision) and saves `out/program.pt2`. The saved program is reloaded and
  1. its signature is checked against the function's contract (contracts/io.json): any mismatch
     fails the job naming the tensor, what the contract expects and what the program has;
  2. the torch checks of `runtime.export.checks` run on it (prefill: matches the student,
     causality, shape independence; decode: prefill + N steps reproduce the full logits and the
     cache and position are used); a failed check fails the job.
`out/report.json` lists the program's inputs, outputs and states, the contract result, every
check, the checkpoint it came from and the provenance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from compiler.planning.params import ExportParams
from runtime.export.checks import Runner, decode_checks, prefill_checks, verify_checks
from runtime.export.contract import ContractError, check_contract
from runtime.export.program import describe, export_function, save_and_reload
from runtime.export.wrappers import torch_dtype, wrap
from runtime.model.checkpoint import load_student, read_record


class ExportJobError(RuntimeError):
    """The export cannot be made or failed a check; the message says which and why."""


def upstream_checkpoint(inputs: dict[str, dict[str, Path]]) -> tuple[str, Path]:
    """(job id, folder) of the one input that provides a `checkpoint`."""
    found = [(job, outs["checkpoint"]) for job, outs in sorted(inputs.items()) if "checkpoint" in outs]
    if len(found) != 1:
        raise ExportJobError(f"export needs exactly one upstream student checkpoint, got {[j for j, _ in found]}")
    return found[0][0], Path(found[0][1])


def kv_dtype(params: ExportParams) -> torch.dtype | None:
    fn = params.function
    for t in (*fn.states, *fn.inputs, *fn.outputs):
        if t.name in ("key_cache", "present_keys"):
            return torch_dtype(t.dtype)
    return None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def run_checks(program: torch.nn.Module, params: ExportParams, student: Any) -> list[dict[str, Any]]:
    run = Runner(program, params.function)
    kv = kv_dtype(params)
    if params.function.role == "prefill":
        return prefill_checks(run, student, kv)
    if kv is None:
        raise ExportJobError(f"function {params.function.name!r}: a decode function needs a KV cache in its contract")
    if params.function.role == "verify":
        return verify_checks(run, student, kv)
    return decode_checks(run, student, kv)


def run(params: ExportParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict[str, Any]:
    out = Path(out)
    fn = params.function
    source, folder = upstream_checkpoint(inputs)
    record = read_record(folder)
    student = load_student(folder, params.architecture).float().eval()
    ctx.log(f"exporting {fn.name} from the {source} checkpoint (step {record['step']})")
    cache_len = fn.states[0].shape[3] if fn.states else None
    if params.cache_len is not None and cache_len is not None and cache_len != params.cache_len:
        raise ExportJobError(f"function {fn.name!r}: contract cache length {cache_len} != shapes.decode.cache_len {params.cache_len}")
    if params.cache_len is not None and fn.role == "prefill" and max(fn.seq_lens) > params.cache_len and fn.states:
        raise ExportJobError(f"function {fn.name!r}: prefill length {max(fn.seq_lens)} does not fit the cache ({params.cache_len})")

    ep = export_function(wrap(student, fn, params.decode_cache), fn, params.architecture.vocab_size)
    program = save_and_reload(ep, out / "program.pt2")
    desc = describe(program)
    problems = check_contract(desc, fn)
    report: dict[str, Any] = {
        "function": fn.name, "role": fn.role, "decode_cache": params.decode_cache, "program": desc,
        "export_dtype": "fp32", "package_compute": params.compute,  # conversion applies the compute precision
        "contract": {"passed": not problems, "problems": problems,
                     "output_names": [t.name for t in fn.outputs]},
        "checkpoint": {"job": source, "step": record["step"], "quantized": record["quantized"],
                       "provenance": record.get("provenance", {})},
        "provenance": ctx.provenance, "torch": torch.__version__,
    }
    if problems:
        _write_json(out / "report.json", report)
        raise ContractError(fn.name, problems)

    checks = run_checks(program.module(), params, student)
    report["checks"] = checks
    _write_json(out / "report.json", report)
    failed = [c for c in checks if not c["passed"]]
    if failed:
        lines = "\n".join(f"  - {json.dumps(c, sort_keys=True)}" for c in failed)
        raise ExportJobError(f"function {fn.name!r}: torch checks failed before conversion:\n{lines}")
    metrics: dict[str, Any] = {"checks_passed": len(checks)}
    for c in checks:
        if "max_abs_diff" in c:
            key = f"{c['name']}_max_abs_diff"
            metrics[key] = max(metrics.get(key, 0.0), c["max_abs_diff"])
    return metrics
