"""What an app needs besides the package: `runtime_config.json` and the chat template (docs/release.md).

The runtime config is derived from the convert report (the package's functions as saved: inputs,
outputs and states with dtypes, shapes and feature descriptions, each function's role and
lengths, the default function, compute units, the standard metadata), the publish params (role,
special tokens) and the tokenizer folder that ships beside the package (its hash, its files,
whether its own encoding already adds bos, its chat template). Everything in it is deterministic:
the same package and tokenizer give the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compiler.planning.params import PublishParams

FORMAT = 1
TOKENIZER_DIR = "tokenizer"
CHAT_TEMPLATE = "chat_template.jinja"
RUNTIME_CONFIG = "runtime_config.json"
# the spec's compute_units -> the MLComputeUnits case an app passes to MLModelConfiguration
COMPUTE_UNITS = {"all": "all", "cpu_only": "cpuOnly", "cpu_and_gpu": "cpuAndGPU", "cpu_and_ne": "cpuAndNeuralEngine"}
CACHE_AXES = ["layers", "batch", "kv_heads", "positions", "head_dim"]


class ConfigError(RuntimeError):
    """The package or tokenizer cannot be described for an app; the message says what is missing."""


def tokenizer_adds_bos(tokenizer: Path, bos: int) -> bool:
    """Whether `tokenizer.json` itself prepends bos when encoding with special tokens (its post-processor)."""
    from tokenizers import Tokenizer

    path = Path(tokenizer) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"the tokenizer folder {tokenizer} has no tokenizer.json")
    ids = Tokenizer.from_file(str(path)).encode("a", add_special_tokens=True).ids
    return bool(ids) and ids[0] == bos


def _tensors(package_fn: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    texts = (package_fn.get("descriptions") or {}).get(kind, {})
    out = []
    for t in package_fn[kind]:
        row = {"name": t["name"], "dtype": t["dtype"], "shape": t["shape"], "description": texts.get(t["name"], "")}
        if t.get("enumerated_shapes"):
            row["enumerated_shapes"] = t["enumerated_shapes"]
        out.append(row)
    return out


def _functions(convert: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, fn in sorted(convert["functions"].items()):
        if "role" not in fn or "package" not in fn:
            raise ConfigError(f"the convert report does not say what function {name!r} is (role, package IO); rerun convert")
        pkg = fn["package"]
        out[name] = {"role": fn["role"], "seq_lens": fn["seq_lens"],
                     **{kind: _tensors(pkg, kind) for kind in ("inputs", "outputs", "states")}}
    return out


def _cache(functions: dict[str, dict[str, Any]], decode: str | None) -> dict[str, Any] | None:
    if decode is None:
        return None
    fn = functions[decode]
    if fn["states"]:
        kind, tensor = "state", next(t for t in fn["states"] if t["name"] == "key_cache")
    else:
        kind, tensor = "explicit", next((t for t in fn["inputs"] if t["name"] == "key_cache"), None)
        if tensor is None:
            raise ConfigError(f"decode function {decode!r} has neither cache states nor key_cache/value_cache inputs")
    return {"kind": kind, "length": tensor["shape"][3], "shape": tensor["shape"], "axes": CACHE_AXES, "dtype": tensor["dtype"],
            "names": ["key_cache", "value_cache"]}


def _stops(special: dict[str, Any]) -> list[dict[str, Any]]:
    stops = [{"name": "eos", "id": special["eos"]["id"], "text": special["eos"]["text"],
              "meaning": "the answer is complete"}]
    if "tool_call_end" in special:
        meaning = "the model called a tool: run the call (JSON between tool_call_start and tool_call_end)"
        if "tool_result_start" in special and "tool_result_end" in special:
            meaning += (f", feed {special['tool_result_start']['text']}result{special['tool_result_end']['text']} "
                        "through decode, then keep generating")
        stops.append({"name": "tool_call_end", "id": special["tool_call_end"]["id"], "text": special["tool_call_end"]["text"],
                      "meaning": meaning})
    return stops


def _steps(prefills: list[dict[str, Any]], decode: str | None, cache: dict[str, Any] | None, bos_rule: str) -> list[str]:
    longest = max(p["length"] for p in prefills)
    steps = [bos_rule,
             "Prefill: take the smallest prefill length >= the number of tokens n, right-pad input_ids with pad_token_id "
             "to it and call that function (`prefill_functions`); the logits row n-1 gives the first new token."]
    if decode is None:
        steps.append(f"No decode function: append each new token and prefill again (at most {longest} tokens).")
        return steps
    if cache and cache["kind"] == "state":
        steps.append("KV cache: the prefill and decode functions share one state (key_cache, value_cache): make a new "
                     "state per sequence and pass the same state to every call.")
    elif cache:
        steps.append("KV cache: keep key_cache and value_cache buffers of `cache.shape`; after prefill copy present_keys/"
                     "present_values into positions 0..n-1; after each decode the outputs present_keys/present_values "
                     "are the next call's key_cache/value_cache.")
    limit = cache["length"] if cache else longest
    steps.append(f"Decode: call `{decode}` with input_ids [[token]] and position [p], p = n, n+1, ...; its logits give the "
                 "next token.")
    if longest < limit:
        steps.append(f"A prompt longer than {longest} tokens: prefill the first {longest}, feed the rest through decode one "
                     "token at a time (only the last one's logits matter).")
    steps.append(f"Stop at a stop token (`stop_token_ids`; `stop_tokens` says what each means) or when the position "
                 f"reaches the cache length ({limit}): prompt and answer together are at most {limit} tokens.")
    return steps


def runtime_config(params: PublishParams, convert: dict[str, Any], tokenizer: Path, tokenizer_sha256: str,
                   has_chat_template: bool) -> dict[str, Any]:
    special = {k: {"id": v.id, "text": v.text} for k, v in sorted(params.special_tokens.items())}
    for required in ("bos", "eos", "pad"):
        if required not in special:
            raise ConfigError(f"the spec has no '{required}' special token")
    functions = _functions(convert)
    prefills = sorted(({"function": name, "length": n} for name, fn in functions.items() if fn["role"] == "prefill"
                       for n in fn["seq_lens"]), key=lambda p: (p["length"], p["function"]))
    decodes = [name for name, fn in functions.items() if fn["role"] == "decode"]
    decode = decodes[0] if decodes else None
    verifies = [{"function": name, "tokens": fn["seq_lens"][0], "drafted": fn["seq_lens"][0] - 1}
                for name, fn in functions.items() if fn["role"] == "verify"]
    cache = _cache(functions, decode)
    if not prefills:
        raise ConfigError("the package has no prefill function")
    logits = next(t for t in functions[prefills[0]["function"]]["outputs"] if t["name"] == "logits")
    adds_bos = tokenizer_adds_bos(tokenizer, special["bos"]["id"])
    bos_rule = (f"Encode the prompt without special tokens and put bos_token_id ({special['bos']['id']}) first: every "
                "training row starts with bos" + (" (this tokenizer's own encoding adds it too: do not add it twice)."
                                                  if adds_bos else "."))
    stops = _stops(special)
    meta = convert.get("model_metadata") or {}
    units = convert.get("compute_units") or (convert.get("metadata") or {}).get("modelspec.compute_units")
    files = sorted(p.relative_to(tokenizer).as_posix() for p in Path(tokenizer).rglob("*") if p.is_file())
    return {
        "format": FORMAT,
        "name": params.name, "version": params.version, "role": params.role,
        "description": meta.get("short_description", ""), "author": meta.get("author", ""), "license": meta.get("license", ""),
        "package": convert["package"], "package_hash": convert["canonical_hash"],
        "target": convert.get("target"),
        "compute_units": COMPUTE_UNITS.get(units, units),
        "default_function": convert["default_function"],
        "functions": functions,
        "prefill_functions": prefills,
        "decode_function": decode,
        # speculative decoding (docs/roles.md): the last accepted token plus `drafted` tokens scored in one call
        "verify_function": verifies[0] if verifies else None,
        "cache": cache,
        "max_tokens": cache["length"] if cache else prefills[-1]["length"],
        "vocab_size": logits["shape"][-1] if logits["shape"] else params.vocab_size,
        "tokenizer": {"folder": TOKENIZER_DIR, "sha256": tokenizer_sha256, "files": files},
        "chat_template": CHAT_TEMPLATE if has_chat_template else None,
        "special_tokens": special,
        "bos_token_id": special["bos"]["id"], "eos_token_id": special["eos"]["id"], "pad_token_id": special["pad"]["id"],
        "prompt": {"prepend_bos": True, "add_special_tokens": False, "tokenizer_adds_bos": adds_bos},
        "stop_token_ids": [s["id"] for s in stops],
        "stop_tokens": stops,
        "steps": _steps(prefills, decode, cache, bos_rule),
        **({"judge": _judge(params)} if params.judge_clauses is not None else {}),
        **({"halt": {"output": "halt", "threshold": params.halt_threshold,
                     "meaning": "the logit that the next token ends the turn (eos or the tool-call end)",
                     "use": f"stop drafting (or decoding) once sigmoid(halt) at the newest position is >= "
                            f"{params.halt_threshold}"}} if params.halt_threshold is not None else {}),
    }


def _judge(params: PublishParams) -> dict[str, Any] | None:
    """How an app asks the judge for a verdict: the input's layout, the output it reads and the verdict's schema."""
    if params.judge_clauses is None:
        return None
    from runtime.data.judge import VERDICT_SCHEMA, layout

    clauses = list(params.judge_clauses)
    return {"clauses": clauses, "layout": layout(clauses), "output": "judge", "verdict_schema": VERDICT_SCHEMA,
            "steps": ["Render the pair with layout.pair (or one response with layout.single), encode it without special "
                      "tokens, put bos first and eos last, and right-pad it to a prefill length.",
                      "Call the prefill function once; read its `judge` output at the position of eos (the last real "
                      "token): index 0 is the score s, the log-odds that response A beats response B; index 1 + i is "
                      "clause i's log-odds of being violated.",
                      "Build the verdict: preferred = A if s > 0 else B, p_a_better = sigmoid(s), clauses = sigmoid of "
                      "each clause logit, violated = the clauses whose logit is > 0 (verdict_schema)."]}
