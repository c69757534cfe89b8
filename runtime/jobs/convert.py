"""The convert job: the exported programs -> one CoreML ML program package.

For each contract function (one export job each: `program.pt2` plus its report) the program is
re-checked against the contract, converted with `ct.convert` (the contract's inputs, enumerated
shapes, outputs and states; fp16 compute except the precision islands, which stay fp32), and
its planned weights are compressed exactly per the quantization plan. The functions are then
saved as one package with `save_multifunction` (always, so function names are the contract's,
even for a single function; identical weights are shared), the default function set, user
metadata stamped (spec hash, fingerprints, tokenizer fingerprint, special-token ids, tool
versions), the standard metadata (author, license, version, short description) and one
description per input, output and state written (runtime/coreml/describe.py), and the Manifest
normalised. The package is inspected and checked before the job
succeeds. Writes `out/<name>.mlpackage` and `out/report.json`; `size_mb` is the gated metric.

coremltools is imported inside `run` (through `runtime.coreml`), once per worker process.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from compiler.planning.params import ConvertParams, FunctionP


class ConvertJobError(RuntimeError):
    """The package cannot be built as the contracts say; the message names the function or module."""


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def export_inputs(inputs: dict[str, dict[str, Path]], params: ConvertParams,
                  spec_hash: str | None) -> dict[str, tuple[Path, dict[str, Any]]]:
    """function name -> (program.pt2, export report), one per contract function, all checked."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for job, outs in sorted(inputs.items()):
        if "program" not in outs:
            continue
        report = _read_json(outs["report"])
        name = report["function"]
        if name in found:
            raise ConvertJobError(f"two exported programs for function {name!r} (second from {job})")
        if not report["contract"]["passed"] or not all(c["passed"] for c in report.get("checks", [])):
            raise ConvertJobError(f"the export of {name!r} ({job}) did not pass its contract and checks; re-run it")
        theirs = ((report.get("provenance") or {}).get("spec") or {}).get("hash")
        if spec_hash and theirs and theirs != spec_hash:
            raise ConvertJobError(f"the export of {name!r} ({job}) was built from spec {theirs}, this conversion is for {spec_hash}")
        found[name] = (Path(outs["program"]), report)
    wanted = [f.name for f in params.functions]
    if sorted(found) != sorted(wanted):
        raise ConvertJobError(f"exported programs for {sorted(found)}, the contract's functions are {sorted(wanted)}")
    return found


def convert_one(fn: FunctionP, program: Path, params: ConvertParams) -> tuple[Any, dict[str, Any]]:
    import torch

    from runtime.coreml.convert_fn import convert_function
    from runtime.coreml.quantize import compressed_weights, count_dequant_ops, quantize, weight_consts
    from runtime.export.contract import require_contract
    from runtime.export.program import describe

    ep = torch.export.load(str(program))
    require_contract(describe(ep), fn)
    model, selector = convert_function(ep, fn, params.precision, params.target, params.compute_units)
    names = weight_consts(ep, model._mil_program, params.quantization)
    model = quantize(model, names, params.quantization)
    report = {
        "precision": selector.summary(), "fp32_ops": selector.kept_fp32,
        "weights": compressed_weights(model._mil_program, names, params.quantization),
        "dequant_ops": count_dequant_ops(model._mil_program),
    }
    return model, report


def run(params: ConvertParams, inputs: dict[str, dict[str, Path]], out: Path, ctx: Any) -> dict[str, Any]:
    start = time.perf_counter()
    from runtime.coreml import package as pkg
    from runtime.coreml.contract import package_problems
    from runtime.coreml.describe import describe_package
    from runtime.coreml.stamp import missing_metadata, package_metadata

    out = Path(out)
    spec_hash = (ctx.provenance.get("spec") or {}).get("hash")
    programs = export_inputs(inputs, params, spec_hash)
    if "tokenizer" not in inputs or "tokenizer" not in inputs["tokenizer"]:
        raise ConvertJobError("convert needs inputs['tokenizer']['tokenizer'] for the tokenizer fingerprint")
    models, functions = {}, {}
    step = ctx.progress("convert functions", len(params.functions))
    for fn in params.functions:
        ctx.detail(f"converting {fn.name}")
        models[fn.name], functions[fn.name] = convert_one(fn, programs[fn.name][0], params)
        step(function=fn.name)

    dest = out / f"{params.name}.mlpackage"
    with tempfile.TemporaryDirectory(prefix="modelspec-convert-") as scratch:
        pkg.save_functions(models, params.default_function, dest, Path(scratch))
    metadata = package_metadata(params, ctx.provenance, Path(inputs["tokenizer"]["tokenizer"]),
                                {name: report for name, (_, report) in programs.items()})
    pkg.stamp_metadata(dest, metadata)
    try:
        describe_package(dest, params.metadata, params.functions, params.default_function, params.special_tokens)
    except ValueError as exc:
        raise ConvertJobError(f"the saved package does not match the contracts: {exc}") from exc
    pkg.normalize_manifest(dest)

    info = pkg.inspect(dest)
    problems = package_problems(info, params.functions, params.default_function)
    problems += [f"metadata {k!r} missing after save_multifunction" for k in missing_metadata(info["metadata"], metadata)]
    m = params.metadata
    want = {"author": m.author, "license": m.license, "version": m.version, "short_description": m.description}
    problems += [f"standard metadata {k!r} is {info['model_metadata'][k]!r}, the spec says {v!r}"
                 for k, v in want.items() if info["model_metadata"][k] != v]
    if problems:
        raise ConvertJobError("the saved package does not match the contracts:\n" + "\n".join(f"  - {p}" for p in problems))
    size = pkg.size_mb(dest)
    canonical = pkg.canonical_hash(dest)
    for name, fn_info in info["functions"].items():
        functions[name]["package"] = fn_info
    for fn in params.functions:  # what the package's IO means (the release's runtime_config.json reads it)
        functions[fn.name].update(role=fn.role, seq_lens=list(fn.seq_lens))
    report = {
        "package": dest.name, "canonical_hash": canonical, "size_mb": size, "default_function": info["default_function"],
        "metadata": info["metadata"], "model_metadata": info["model_metadata"], "functions": functions,
        "packaging": params.packaging, "target": params.target, "compute_units": params.compute_units,
        "seconds": round(time.perf_counter() - start, 3), "provenance": ctx.provenance,
    }
    (out / "report.json").write_text(json.dumps(report, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return {"size_mb": size, "functions": len(params.functions)}
