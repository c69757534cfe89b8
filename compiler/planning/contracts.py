"""Contract files: what the package must be, as plain JSON-ready dicts (written by a serializer)."""

from __future__ import annotations

from compiler.analysis.catalogue import CATALOGUE
from compiler.analysis.derived import Derived
from compiler.planning.interface import default_function, functions
from compiler.analysis.resolve import precision_plan, quant_plan
from compiler.schema.spec import Spec


def io_contract(spec: Spec) -> dict:
    return {
        "batch": spec.shapes.batch,
        "default_function": default_function(spec),
        "packaging": spec.export.coreml.packaging,
        "decode_cache": spec.export.coreml.decode_cache if spec.shapes.decode.enabled else None,
        "target": spec.export.coreml.target,
        "functions": {f.name: f.model_dump(mode="json", exclude={"name"}) for f in functions(spec)},
    }


def tokens_contract(spec: Spec) -> dict:
    tokens = spec.tokenizer.special_tokens
    return {
        "vocab_size": spec.architecture.vocab_size,
        "source": spec.tokenizer.source.kind,
        "special_tokens": {k: {"id": v.id, "text": v.text} for k, v in sorted(tokens.items())},
        "reference_string": "".join(v.text for _, v in sorted(tokens.items(), key=lambda kv: kv[1].id)) + " hello world",
    }


def quantization_contract(spec: Spec) -> dict:
    compute = spec.precision.compute
    modules = {
        q.module: {
            "kind": q.kind,
            "shape": list(q.shape),
            "dtype": q.dtype,
            "granularity": q.granularity,
            "block_size": q.block_size,
            "source": q.source,
            "bytes": q.weight_bytes(compute),
        }
        for q in quant_plan(spec)
    }
    return {"kv_cache": spec.quantization.kv_cache, "compute": compute, "modules": modules}


def precision_contract(spec: Spec) -> dict:
    plan = precision_plan(spec)
    return {
        "compute": plan.compute,
        "island_modules": {pattern: matched for pattern, matched in sorted(plan.island_modules.items())},
        "island_ops": plan.island_ops,
        "reasons": dict(sorted(plan.reasons.items())),
    }


def gates_contract(spec: Spec) -> dict:
    gates = []
    for g in spec.gates:
        m = CATALOGUE[g.metric]
        gates.append({"metric": g.metric, "op": g.op, "value": g.value, "policy": g.policy, "min_n": g.min_n,
                      "kind": m.kind, "producer": m.producer, "description": m.description})
    return {"gates": gates}


def budget_contract(spec: Spec, derived: Derived) -> dict:
    return derived.as_json(spec)
