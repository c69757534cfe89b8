"""Compare an observed package (observe.py) with what the spec's compiled contracts expect.

Every mismatch is one `Mismatch`: the check group, what is wrong, the expected and observed
values, and the spec key path it comes from (mapped to file:line:col by `locate` when the spec
document is at hand). Nothing is skipped silently: a check that cannot run (no tokenizer to
fingerprint) is listed under `not_checked` with the reason.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass
from typing import Any

from compiler.planning.params import FunctionP, TensorP, VerifyParams

LARGE_DENSE_ELEMENTS = 1 << 14  # a dense float const this large must be a weight the recipe exempts
META = "modelspec."
ROPE_FP32_OPS = ("sin", "cos")  # only the RoPE tables use them in this architecture


@dataclass
class Mismatch:
    check: str  # io | quantization | precision | provenance | size | integrity
    what: str
    expected: Any
    observed: Any
    key_path: str
    where: str = ""  # file:line:col once located

    def line(self) -> str:
        at = f"{self.where} ({self.key_path})" if self.where else self.key_path
        return f"[{self.check}] {self.what}: expected {_show(self.expected)}, observed {_show(self.observed)}  <- {at}"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _paired(tensors: list[dict[str, Any]] | list[TensorP]) -> list[list[list[int]]] | None:
    """Enumerated shapes as paired tuples across inputs (CoreML pairs them by index)."""
    rows = [(t["name"], t.get("enumerated_shapes")) if isinstance(t, dict) else (t.name, t.enumerated_shapes) for t in tensors]
    enum = [(n, e) for n, e in sorted(rows) if e]
    if not enum:
        return None
    lengths = {len(e) for _, e in enum}
    if len(lengths) != 1:
        return [[list(s) for s in e] for _, e in enum]  # unpairable: compared as is
    return sorted([[list(e[i]) for _, e in enum] for i in range(lengths.pop())])


def _io(params: VerifyParams, obs: dict[str, Any]) -> list[Mismatch]:
    out: list[Mismatch] = []
    want = sorted(f.name for f in params.functions)
    got = sorted(obs["functions"])
    if want != got:
        out.append(Mismatch("io", "functions", want, got, "export.coreml.packaging"))
    if obs["default_function"] != params.default_function:
        out.append(Mismatch("io", "default function", params.default_function, obs["default_function"], "export.coreml.packaging"))
    for fn in params.functions:
        o = obs["functions"].get(fn.name)
        if o is not None:
            out += _function_io(fn, o)
    return out


def _function_io(fn: FunctionP, o: dict[str, Any]) -> list[Mismatch]:
    out: list[Mismatch] = []
    key = {"decode": "shapes.decode", "verify": "shapes.decode.verify_k"}.get(fn.role, "shapes.prefill")
    for kind, wanted in (("inputs", fn.inputs), ("outputs", fn.outputs), ("states", fn.states)):
        where = "export.coreml.decode_cache" if kind == "states" else key
        have = {t["name"]: t for t in o[kind]}
        if sorted(have) != sorted(t.name for t in wanted):
            out.append(Mismatch("io", f"function {fn.name!r} {kind} names", sorted(t.name for t in wanted), sorted(have), where))
        for t in wanted:
            g = have.get(t.name)
            if g is None:
                continue
            label = f"function {fn.name!r} {kind[:-1]} {t.name!r}"
            if g["dtype"] != t.dtype:
                out.append(Mismatch("io", f"{label} dtype", t.dtype, g["dtype"], "precision.compute" if kind != "inputs" else where))
            if not t.enumerated_shapes and g["shape"] and not any(isinstance(d, str) for d in t.shape) and g["shape"] != t.shape:
                out.append(Mismatch("io", f"{label} shape", t.shape, g["shape"], where))
    want_enum, got_enum = _paired(fn.inputs), _paired(o["inputs"])
    if want_enum != got_enum:
        out.append(Mismatch("io", f"function {fn.name!r} enumerated input shapes (paired across inputs)", want_enum, got_enum, key))
    return out


def _quantization(params: VerifyParams, obs: dict[str, Any]) -> list[Mismatch]:
    out: list[Mismatch] = []
    src = params.quantization_sources
    planned = {q.module: q for q in params.quantization}
    seen: set[str] = set()
    for name, fo in sorted(obs["functions"].items()):
        for c in fo["compressed"]:
            module = c["module"]
            if module is None or module not in planned:
                out.append(Mismatch("quantization", f"function {name!r}: compressed constant {c['name']!r} is not a planned weight",
                                    "not compressed", f"{c['op']} {c['storage_dtype']}", "quantization.weights"))
                continue
            seen.add(module)
            q = planned[module]
            granularity = q.granularity or "per_tensor"
            want = {"dtype": q.dtype, "granularity": granularity, "block_size": q.block_size if granularity == "per_block" else None}
            got = {"dtype": c["storage_dtype"], "granularity": c["granularity"], "block_size": c["block_size"]}
            if q.dtype == "none":
                out.append(Mismatch("quantization", f"module {module!r} weight", "dense (dtype none)", got, src.get(module, "quantization.weights")))
            elif want != got:
                out.append(Mismatch("quantization", f"module {module!r} weight", want, got, src.get(module, "quantization.weights")))
        for d in fo["dense"]:
            module = d["module"]
            if module in planned:
                seen.add(module)
                q = planned[module]
                if q.dtype != "none":
                    out.append(Mismatch("quantization", f"module {module!r} weight", f"{q.dtype} {q.granularity or 'per_tensor'}",
                                        f"dense {d['dtype']}", src.get(module, "quantization.weights")))
            elif module is None and d["dtype"] in ("fp16", "fp32") and d["elements"] >= LARGE_DENSE_ELEMENTS \
                    and not d.get("zeros"):  # coremltools gives a bias-free `linear` a zero bias: vocab-sized for the lm_head
                out.append(Mismatch("quantization", f"function {name!r}: large dense constant {d['name']!r} ({d['elements']} elements) "
                                    "is not a weight the recipe exempts", "compressed or exempt", f"dense {d['dtype']}",
                                    "quantization.weights"))
    for module in sorted(set(planned) - seen):
        out.append(Mismatch("quantization", f"module {module!r} weight", "present in the package", "not found",
                            src.get(module, "quantization.weights")))
    return out


def _precision(params: VerifyParams, obs: dict[str, Any]) -> list[Mismatch]:
    out: list[Mismatch] = []
    for name, fo in sorted(obs["functions"].items()):
        for op_kind in params.precision.island_ops:
            dtypes = fo["op_output_dtypes"].get(op_kind, {})
            bad = {k: v for k, v in dtypes.items() if k != "fp32"}
            if bad:
                out.append(Mismatch("precision", f"function {name!r}: {op_kind} ops compute in", "fp32", bad, f"precision.islands[op={op_kind}]"))
        for op_kind in ROPE_FP32_OPS:  # built-in island (runtime/coreml/scopes.py): RoPE angles
            bad = {k: v for k, v in fo["op_output_dtypes"].get(op_kind, {}).items() if k != "fp32"}
            if bad:
                out.append(Mismatch("precision", f"function {name!r}: RoPE {op_kind} ops compute in", "fp32", bad, "precision.compute"))
        for module in params.precision.island_modules:
            region = fo["islands"].get(module)
            if not region:
                out.append(Mismatch("precision", f"function {name!r}: island {module!r}", "its weight consumed by fp32 ops",
                                    "weight not found", f"precision.islands[module={module}]"))
                continue
            bad = [f"{r['type']}:{r['op']}={r['dtype']}" for r in region if r["dtype"] not in ("fp32", "bool", "int32", None)]
            if bad:
                out.append(Mismatch("precision", f"function {name!r}: island {module!r} ops compute in", "fp32", bad,
                                    f"precision.islands[module={module}]"))
        if fo["nonfinite_fp_consts"]:
            out.append(Mismatch("precision", f"function {name!r}: floating constants are finite", "all finite",
                                sorted(fo["nonfinite_fp_consts"]), "precision.compute"))
    return out


def _provenance(params: VerifyParams, obs: dict[str, Any], spec_hash: str, tokenizer_sha256: str | None,
                convert_fingerprint: str | None, chat_template_sha256: str | None = None) -> tuple[list[Mismatch], list[str]]:
    """Built from this spec: the stamped spec hash is this spec's, or the package's convert
    fingerprint is the one this spec compiles to (the spec changed only where the package does
    not depend on it: a gate, a comment). Missing provenance always fails."""
    out: list[Mismatch] = []
    not_checked: list[str] = []
    meta = obs["metadata"]
    got_hash = meta.get(META + "spec_hash")
    try:
        got_fp = json.loads(meta.get(META + "fingerprints", "{}")).get("convert")
    except (json.JSONDecodeError, AttributeError):
        got_fp = None
    if not got_hash:
        out.append(Mismatch("provenance", "spec hash (missing: the package was not built by modelspec from a spec)",
                            spec_hash, "missing", "version"))
    elif got_hash != spec_hash and (convert_fingerprint is None or got_fp != convert_fingerprint):
        out.append(Mismatch("provenance", "spec hash (foreign: the package was built from another spec, or from a version "
                            "of this one that changed what the package depends on)",
                            {"spec_hash": spec_hash, "convert_fingerprint": convert_fingerprint},
                            {"spec_hash": got_hash, "convert_fingerprint": got_fp}, "version"))
    elif got_hash != spec_hash:
        not_checked.append(f"spec hash {got_hash[:12]} differs from this spec's {spec_hash[:12]} only where the package "
                           "does not depend on it (the convert fingerprint matches)")
    want_tokens = {k: v.id for k, v in sorted(params.special_tokens.items())}
    try:
        got_tokens = json.loads(meta.get(META + "special_tokens", "null"))
    except json.JSONDecodeError:
        got_tokens = meta.get(META + "special_tokens")
    if got_tokens != want_tokens:
        out.append(Mismatch("provenance", "special-token ids", want_tokens, got_tokens or "missing", "tokenizer.special_tokens"))
    if tokenizer_sha256 is None:
        not_checked.append("tokenizer fingerprint: no tokenizer given (run the tokenizer job first or pass --tokenizer)")
    elif meta.get(META + "tokenizer_sha256") != tokenizer_sha256:
        out.append(Mismatch("provenance", "tokenizer fingerprint", tokenizer_sha256, meta.get(META + "tokenizer_sha256") or "missing",
                            "tokenizer"))
    if tokenizer_sha256 is not None and meta.get(META + "chat_template_sha256") != chat_template_sha256:
        out.append(Mismatch("provenance", "chat template (the app formats prompts with the package's; training rendered "
                            "them with the tokenizer's)", chat_template_sha256 or "none",
                            meta.get(META + "chat_template_sha256") or "none", "tokenizer.chat_template"))
    if meta.get(META + "name") not in (None, params.name):
        out.append(Mismatch("provenance", "model name", params.name, meta.get(META + "name"), "name"))
    return out, not_checked


def check(params: VerifyParams, obs: dict[str, Any], *, spec_hash: str,
          tokenizer_sha256: str | None, convert_fingerprint: str | None = None,
          chat_template_sha256: str | None = None) -> dict[str, Any]:
    mismatches = [Mismatch("integrity", p, "every weight reference inside the package", "unresolved", "export.coreml")
                  for p in obs["problems"]]
    mismatches += _io(params, obs) + _quantization(params, obs) + _precision(params, obs)
    prov, not_checked = _provenance(params, obs, spec_hash, tokenizer_sha256, convert_fingerprint, chat_template_sha256)
    mismatches += prov
    if params.size_budget_mb is not None and obs["size_mb"] > params.size_budget_mb:
        mismatches.append(Mismatch("size", "package size (MiB)", f"<= {params.size_budget_mb:g}", round(obs["size_mb"], 4),
                                   "gates[metric=package.size_mb]"))
    return {"passed": not mismatches, "mismatches": mismatches, "not_checked": not_checked}


def locate(mismatches: list[Mismatch], doc: Any) -> None:
    """Fill `where` (file:line:col) from the spec document; selectors like `[module=x]` pick list items."""
    for m in mismatches:
        path = _resolve(m.key_path, doc.data)
        mark = doc.mark(path)
        m.where = f"{doc.file}:{mark.line}:{mark.col}"


def _resolve(key_path: str, data: Any) -> tuple:
    out: list[Any] = []
    node = data
    for part in key_path.replace("]", "").split("."):
        name, _, sel = part.partition("[")
        if name:
            out.append(name)
            node = node.get(name) if isinstance(node, dict) else None
        if sel and isinstance(node, list):
            if sel.isdigit():
                idx = int(sel)
            else:
                k, _, v = sel.partition("=")
                idx = next((i for i, item in enumerate(node) if isinstance(item, dict) and isinstance(item.get(k), str)
                            and (item[k] == v or fnmatch.fnmatchcase(v, item[k]))), None)
            if idx is None or idx >= len(node):
                break
            out.append(idx)
            node = node[idx]
    return tuple(out)


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    return {**result, "mismatches": [asdict(m) for m in result["mismatches"]]}
