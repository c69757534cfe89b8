"""`modelspec new`: a valid spec for a role, with an architecture sized to a parameter count.

Sizing rule (docs/authoring.md): every scaffold shares the shipped specs' 32,768-token
tokenizer, untied embeddings and GQA with 128-wide heads (64 below d_model 1536). `SHAPES` is a
table of widths; the widest row that still reaches `MIN_LAYERS` layers is used (the narrowest
row when none does), and n_layers = round((N - embeddings - final norm) / params per layer).
One layer is at most ~1/24 of the model, so the result lands within ~2% of N; anything off by
more than `TOLERANCE` is refused. The table reproduces the shipped specs: 9b -> d_model 4096 x
36 layers (worker-9b), 4b -> 3072 x 36 (judge-4b, drafter-4b).

Everything else (context, shapes, losses, gates, quantization, deployment profiles) comes from
the role's shipped spec; memory budgets are the derived need plus 25%. Derived values are
written as comments, and the text is validated and checked fmt-clean before it is returned.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any
from dataclasses import dataclass

from compiler.core.errors import Problem, SpecError
from compiler.authoring.fmt import check_same, format_text
from compiler.authoring.yaml_emit import emit
from compiler.authoring.yaml_tree import Raw, node_from_data, plain_data
from compiler.reading.loader import load_text
from compiler.analysis.modules import canonical_modules
from compiler.schema.architecture import Architecture

ROLES = ("worker", "judge", "drafter")
VOCAB = 32768
MIN_LAYERS = 24
TOLERANCE = 0.10
NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")

# (d_model, n_heads, n_kv_heads, d_head, mlp hidden)
SHAPES = (
    (512, 8, 2, 64, 1536),
    (1024, 16, 4, 64, 2816),
    (1536, 12, 4, 128, 4352),
    (2048, 16, 8, 128, 5632),
    (3072, 24, 8, 128, 8704),
    (4096, 32, 8, 128, 16384),
    (6144, 48, 8, 128, 24576),
    (8192, 64, 8, 128, 32768),
)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmbtKMBT]?)\s*$")
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}
MIN_SIZE, MAX_SIZE = 10**6, 10**12


def _arg(where: str, message: str, hint: str | None = None) -> SpecError:
    return SpecError([Problem("<command line>", 1, 1, where, message, hint)])


def parse_size(text: str) -> int:
    """'0.5b', '4B', '125m', '9000000000', '4e9' -> parameters."""
    m = _SIZE.match(text)
    if m:
        n = float(m.group(1)) * _SCALE[m.group(2).lower()]
    else:
        try:
            n = float(text)
        except ValueError:
            raise _arg("--size", f"cannot read size {text!r}", "write e.g. 0.5b, 4b, 9b, 125m or a parameter count") from None
    if not math.isfinite(n) or not MIN_SIZE <= n <= MAX_SIZE:
        raise _arg("--size", f"size {text!r} is outside 1m..1t parameters", "write e.g. 0.5b, 4b or 9b")
    return int(round(n))


def size_label(n: int) -> str:
    if n % 10**9 == 0:
        return f"{n // 10**9}b"
    if n % 10**6 == 0:
        return f"{n // 10**6}m"
    return str(n)


def _arch(row: tuple, layers: int) -> Architecture:
    d, h, kv, dh, hidden = row
    return Architecture.model_validate({
        "vocab_size": VOCAB, "d_model": d, "n_layers": layers, "n_heads": h, "n_kv_heads": kv, "d_head": dh,
        "mlp": {"kind": "swiglu", "hidden": hidden}, "norm": {"kind": "rmsnorm", "eps": 1e-5},
        "rope": {"theta": 500000.0, "scaling": "none"}, "max_context": 4096, "tie_embeddings": False,
    })


def _count(row: tuple, layers: int) -> int:
    return sum(m.params for m in canonical_modules(_arch(row, layers)))


@dataclass(frozen=True)
class Sized:
    row: tuple
    n_layers: int
    params: int
    target: int

    @property
    def error(self) -> float:
        return (self.params - self.target) / self.target


def size_architecture(target: int) -> Sized:
    candidates = []
    for row in SHAPES:
        one, two = _count(row, 1), _count(row, 2)
        per_layer, fixed = two - one, one - (two - one)
        layers = max(1, min(4096, round((target - fixed) / per_layer)))
        candidates.append(Sized(row, layers, fixed + layers * per_layer, target))
    deep = [c for c in candidates if c.n_layers >= MIN_LAYERS]
    best = deep[-1] if deep else candidates[0]
    if abs(best.error) > TOLERANCE:
        smallest = candidates[0].params - (candidates[0].n_layers - 1) * (_count(SHAPES[0], 2) - _count(SHAPES[0], 1))
        raise _arg("--size", f"cannot size a model near {target:,} parameters (closest: {best.params:,})",
                   f"with a {VOCAB}-token vocabulary the smallest scaffold has about {smallest / 1e6:.0f}M parameters")
    return best


# ---------------------------------------------------------------------------- role presets

_TOKENS = {"pad": ("<pad>", 0), "bos": ("<s>", 1), "eos": ("</s>", 2), "think_start": ("<think>", 32000),
           "think_end": ("</think>", 32001), "tool_call_start": ("<tool_call>", 32002), "tool_call_end": ("</tool_call>", 32003),
           "tool_result_start": ("<tool_result>", 32004), "tool_result_end": ("</tool_result>", 32005)}

_INT4_RECIPE = {
    "default": {"dtype": "int4", "granularity": "per_block", "block_size": 32},
    "rules": [
        {"match": "embed_tokens", "dtype": "int8", "granularity": "per_channel"},
        {"match": "layers.*.self_attn.*", "dtype": "int8", "granularity": "per_channel"},
        {"match": "lm_head", "dtype": "int8", "granularity": "per_channel"},
    ],
}


def _gate(metric, op, value, min_n=None, policy=None):
    g = {"metric": metric, "op": op, "value": Raw(value)}
    if min_n is not None:
        g["min_n"] = min_n
    if policy:
        g["policy"] = policy
    return g


# speed thresholds, set from the profiles' chips (compiler/analysis/chips.py): TTFT at 3x the roofline's
# least, decode at half its most, so that a well-made package can pass them (docs/speed.md)
TTFT, TPS = "<ttft>", "<tps>"
ROOFLINE_TTFT, ROOFLINE_TPS = 3.0, 0.5

PRESETS = {
    "worker": {
        "max_context": 16384, "prefill": [4096, 8192, 16384], "decode": 16384, "packaging": "multifunction",
        "steps": 20000, "micro_batch": 1, "grad_accum": 16,
        "curriculum": [(12000, 4096), (17000, 8192), (20000, 16384)],
        "losses": {"kl": {"weight": Raw("1.0"), "temperature": Raw("2.0")}, "ce_teacher": {"weight": Raw("0.5")},
                   "ce_ground_truth": {"weight": Raw("0.2")}, "tool_name": {"weight": Raw("0.3")},
                   "json_args": {"weight": Raw("0.3")}, "integration": {"weight": Raw("0.2")},
                   "length_kd": {"weight": Raw("0.05"), "hinge": Raw("0.15"), "slope": Raw("1.0")},
                   "early_tool": {"weight": {"ramp": {"start": Raw("0.0"), "end": Raw("0.05"), "steps": 2000}}, "within_tokens": 25}},
        "quantization": _INT4_RECIPE,
        "softmax": "long-context softmax loses mass in fp16",
        "profiles": [("m1-max-64g", 2, 16384, "apple-m1-max"), ("m3-pro-36g", 1, 8192, "apple-m3-pro")],
        "gates": [
            _gate("parity.snr_db", ">=", "55"), _gate("parity.top1_agreement", ">=", "0.99"),
            _gate("parity.quant_top1_agreement", ">=", "0.95"), _gate("eval.json_validity", ">=", "0.98", 500),
            _gate("eval.tool_selection", ">=", "0.90", 500), _gate("eval.integration_f1_lax", ">=", "0.85", 200),
            _gate("eval.privacy_ok_rate", "==", "1.0", 100), _gate("eval.control_tool_calls", "==", "0"),
            None,  # package.size_mb, from the derived weight bytes
            _gate("speed.ttft_p50_ms", "<=", TTFT, 50), _gate("speed.tps_p50", ">=", TPS, 50, "warn"),
            _gate("speed.ttft_p50_regression", "<=", "0.05", None, "warn"),
        ],
    },
    "judge": {
        "max_context": 2048, "prefill": [512, 1024, 2048], "decode": None, "packaging": "enumerated",
        "steps": 8000, "micro_batch": 4, "grad_accum": 8,
        "curriculum": [(4000, 512), (6500, 1024), (8000, 2048)],
        "losses": {"pairwise": {"weight": Raw("1.0")}, "clauses": {"weight": Raw("0.5")},
                   "verdict_kd": {"weight": {"ramp": {"start": Raw("0.0"), "end": Raw("0.5"), "steps": 1000}}}},
        "quantization": {"default": {"dtype": "int8", "granularity": "per_channel"},
                         "rules": [{"match": "layers.*.mlp.*", "dtype": "int4", "granularity": "per_block", "block_size": 64}]},
        "softmax": "verdict logits are compared across candidates",
        "profiles": [("m1-max-64g", 4, 2048, "apple-m1-max"), ("m3-pro-36g", 2, 2048, "apple-m3-pro")],
        "gates": [
            # a judge's verdicts are its head's outputs, not the vocabulary's top-1: parity gates the head
            _gate("parity.snr_db", ">=", "55"), _gate("eval.pairwise_accuracy", ">=", "0.85", 1000),
            _gate("eval.position_bias_rate", "<=", "0.05", 500), _gate("eval.clause_f1_micro", ">=", "0.8", 500),
            _gate("eval.verdict_json_validity", "==", "1.0", 500),
            _gate("parity.judge_snr_db", ">=", "55"), _gate("parity.judge_sign_agreement", ">=", "0.99"), None,
            _gate("speed.ttft_p50_ms", "<=", TTFT, 50), _gate("speed.ttft_p50_regression", "<=", "0.05", None, "warn"),
        ],
    },
    "drafter": {
        "max_context": 4096, "prefill": [2048, 4096], "decode": 4096, "packaging": "multifunction",
        "steps": 10000, "micro_batch": 2, "grad_accum": 8,
        "curriculum": [(7000, 2048), (10000, 4096)],
        "losses": {"kl": {"weight": Raw("1.0"), "temperature": Raw("2.0")}, "ce_teacher": {"weight": Raw("0.5")},
                   "ce_ground_truth": {"weight": Raw("0.1")}, "tool_name": {"weight": Raw("0.1")},
                   "json_args": {"weight": Raw("0.1")}},
        "quantization": _INT4_RECIPE,
        "softmax": "draft acceptance compares probabilities with the worker",
        "profiles": [("m1-max-64g", 2, 4096, "apple-m1-max"), ("m3-pro-36g", 1, 4096, "apple-m3-pro")],
        "gates": [
            _gate("parity.snr_db", ">=", "55"), _gate("parity.top1_agreement", ">=", "0.99"),
            _gate("parity.quant_top1_agreement", ">=", "0.95"), _gate("eval.json_validity", ">=", "0.95", 500),
            _gate("eval.tool_selection", ">=", "0.80", 500), _gate("eval.privacy_ok_rate", "==", "1.0", 100), None,
            _gate("speed.tps_p50", ">=", TPS, 50), _gate("speed.ttft_p50_ms", "<=", TTFT, 50, "warn"),
        ],
    },
}


def _human_bytes(n: float) -> str:
    from compiler.output.text import human_bytes

    return human_bytes(n)


def _human_count(n: float) -> str:
    from compiler.output.text import human_count

    return human_count(n)


def _speed_value(g: dict, speed: dict[str, str]) -> dict:
    value = g["value"].text
    return dict(g, value=Raw(speed[value])) if value in speed else g


def speed_thresholds(spec: Any) -> dict[str, str]:
    """TTFT and decode thresholds every profile's chip leaves room for (3x / 0.5x its roofline)."""
    from compiler.analysis.chips import CHIPS, bounds
    from compiler.analysis.derived import derive

    derived = derive(spec)
    limits = [bounds(spec, derived, CHIPS[p.chip]) for p in spec.deployment.profiles if p.chip in CHIPS]
    ttft = max(lim["ttft_min_ms"] for lim in limits) * ROOFLINE_TTFT
    tps = min(lim["tps_max"] for lim in limits) * ROOFLINE_TPS
    return {TTFT: str(max(100, math.ceil(ttft / 100) * 100)), TPS: str(max(1, math.floor(tps)))}


def scaffold_data(role: str, sized: Sized, name: str, memory_gb: dict[str, int] | None = None, size_mb: int = 100000,
                  speed: dict[str, str] | None = None) -> dict:
    p = PRESETS[role]
    d, h, kv, dh, hidden = sized.row
    label = size_label(sized.target)
    profiles = [{"name": n, "memory_gb": (memory_gb or {}).get(n, 1024), "sessions": s, "context": c, "chip": chip}
                for n, s, c, chip in p["profiles"]]
    speed = speed or {TTFT: "100000", TPS: "1"}
    gates = [_speed_value(g, speed) if g is not None else _gate("package.size_mb", "<=", str(size_mb)) for g in p["gates"]]
    return {
        "modelspec": 1,
        "name": name,
        "version": "0.1.0",
        "role": role,
        "description": f"{label} GQA {role} scaffolded by modelspec new; point the "
                       f"{'' if role == 'judge' else 'teacher, '}tokenizer and data at real locations.",
        "architecture": {
            "vocab_size": VOCAB, "d_model": d, "n_layers": sized.n_layers, "n_heads": h, "n_kv_heads": kv, "d_head": dh,
            "mlp": {"kind": "swiglu", "hidden": hidden}, "norm": {"kind": "rmsnorm", "eps": Raw("1.0e-5")},
            "rope": {"theta": Raw("500000.0"), "scaling": "none"}, "max_context": p["max_context"], "tie_embeddings": False,
        },
        "tokenizer": {
            "source": {"kind": "pretrained", "path": "/mnt/models/tokenizers/worker-32k"},
            "special_tokens": {k: {"text": t, "id": i} for k, (t, i) in _TOKENS.items()},
        },
        **({"judge": {"clauses": ["privacy", "accuracy", "safety"], "objective": "bradley_terry"}} if role == "judge" else
           {"teacher": {"kind": "hf_local", "path": f"/mnt/models/teachers/{name}-teacher", "top_k": 32}}),
        "data": {"train": f"s3://distill-data/{name}/train.jsonl", "eval": f"s3://distill-data/{name}/eval.jsonl",
                 **({} if role == "judge" else {"tool_registry": f"s3://distill-data/{name}/tools.json"})},
        "training": {
            "seed": 20241219, "steps": p["steps"], "micro_batch": p["micro_batch"], "grad_accum": p["grad_accum"],
            "optimizer": {"name": "adamw", "lr": Raw("2.0e-4"), "betas": [Raw("0.9"), Raw("0.95")], "weight_decay": Raw("0.1"),
                          "grad_clip": Raw("1.0")},
            "lr_schedule": {"warmup_steps": 500, "decay": "cosine", "min_lr": Raw("2.0e-5")},
            "curriculum": [{"until_step": u, "seq_len": s} for u, s in p["curriculum"]],
            "checkpoint_every": 500,
            "losses": p["losses"],
            "grad_balance": {"max_ratio": Raw("10.0"), "window": 50},
            "qat": {"enabled": True, "start_fraction": Raw("0.9"), "lr_scale": Raw("0.1")},
            "resources": {"device": "cuda", "nproc": 8},
        },
        "quantization": {"kv_cache": "fp16", "weights": p["quantization"]},
        "shapes": {"batch": 1, "prefill": list(p["prefill"]),
                   "decode": {"enabled": True, "cache_len": p["decode"]} if p["decode"] else {"enabled": False}},
        "precision": {"compute": "fp16", "islands": [
            {"module": "layers.*.*_layernorm", "reason": "RMSNorm pow overflows fp16 with outlier activations"},
            {"module": "norm", "reason": "final norm"},
            {"op": "softmax", "reason": p["softmax"]},
        ]},
        "export": {"coreml": {"target": "macOS15", "compute_units": "all", "packaging": p["packaging"],
                              "decode_cache": "state"}},
        "deployment": {"profiles": profiles},
        "gates": gates,
    }


def _validate(text: str, file: str, spec_dir: str):
    from compiler.reading.validate import validate_doc

    doc = load_text(text, file)
    return doc, validate_doc(doc, spec_dir)


def scaffold(role: str, size: str, name: str | None = None, out_path: str | None = None) -> str:
    """The text of a new, valid, fmt-clean spec."""
    from compiler.analysis.derived import derive

    if role not in ROLES:
        raise _arg("--role", f"unknown role {role!r}", f"use one of {', '.join(ROLES)}")
    target = parse_size(size)
    sized = size_architecture(target)
    name = name if name is not None else f"{role}-{size_label(target)}"
    if not NAME.match(name) or len(name) > 64:
        raise _arg("--name", f"name {name!r} is not [a-z0-9][a-z0-9-]* (at most 64 characters)",
                   "names become folder names under generated/: lowercase letters, digits and dashes")
    file = out_path or "<new>"
    spec_dir = os.path.dirname(os.path.abspath(out_path)) if out_path else os.getcwd()

    # first pass: derive the sizes that the memory budgets and the size gate are set from
    data = scaffold_data(role, sized, name)
    _, spec = _validate(emit(node_from_data(plain_data(data)), None), file, spec_dir)
    derived = derive(spec)
    budgets = {}
    for p in spec.deployment.profiles:
        budgets[p.name] = max(1, math.ceil(derived.profile_bytes(p) * 1.25 / (1 << 30)))
    size_mb = max(1, math.ceil(derived.weight_bytes * 1.1 / (1 << 20) / 100) * 100)
    data = scaffold_data(role, sized, name, budgets, size_mb, speed_thresholds(spec))
    plain = plain_data(data)
    first_doc, spec = _validate(emit(node_from_data(plain), None), file, spec_dir)
    derived = derive(spec)

    schema_rel = os.path.relpath(os.path.abspath(os.path.join("generated", "modelspec.schema.json")), spec_dir).replace(os.sep, "/")
    r = sized
    header = [
        f"# yaml-language-server: $schema={schema_rel}",
        f"# Scaffolded by: modelspec new --role {role} --size {size_label(target)}. Edit freely; `modelspec fmt` keeps it tidy.",
        f"# Derived (compiler/analysis/derived.py): {derived.params:,} parameters ({r.error:+.1%} of {size_label(target)}),",
        f"# {_human_bytes(derived.weight_bytes)} of weights under the quantization recipe "
        f"({_human_bytes(derived.dense_fp16_bytes)} dense fp16), KV cache {_human_bytes(derived.kv_bytes_per_token)} per token,",
        f"# training {_human_count(derived.training_tokens)} tokens, {derived.training_flops:.3g} FLOPs (6 x params x tokens).",
        "# TODO: " + ("" if role == "judge" else "teacher.path, ") + "tokenizer.source.path and data.* are placeholders"
        + (" (a judge's rows: docs/roles.md#judge-data)." if role == "judge" else "."),
    ]
    comments: dict[tuple, tuple[list[str], str | None]] = {
        ("modelspec",): (header, None),
        ("architecture", "d_model"): ([], f"sizing table row for {size_label(target)} (docs/authoring.md)"),
        ("architecture", "n_layers"): ([], f"round((N - embeddings) / params per layer) -> {derived.params:,} parameters"),
        ("quantization", "kv_cache"): ([], f"{_human_bytes(derived.kv_bytes_per_token)} of KV cache per token"),
        ("training", "steps"): ([], f"{_human_count(derived.training_tokens)} tokens, {derived.training_flops:.3g} training FLOPs"),
        ("deployment", "profiles"): (["# memory_gb: the derived need plus 25%; set the device's real budget"], None),
    }
    for i, p in enumerate(spec.deployment.profiles):
        kv = p.sessions * p.context * derived.kv_bytes_per_token
        comments[("deployment", "profiles", i)] = ([], f"needs {_human_bytes(derived.profile_bytes(p))} "
                                                       f"(weights + {_human_bytes(kv)} KV)")
    text = emit(node_from_data(data, comments), spec)
    check_same(first_doc, spec, text, file, spec_dir)
    if format_text(text, file, spec_dir) != text:  # pragma: no cover - a formatter/scaffold disagreement is a bug
        raise AssertionError("scaffold output is not fmt-clean")
    return text
