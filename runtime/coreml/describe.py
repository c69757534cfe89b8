"""The package's standard metadata and one line per feature, for people (Xcode's model viewer).

`describe_package` sets the Model proto's `description.metadata` (author, license, version, short
description: from `ConvertParams.metadata`) and the `shortDescription` of every input, output and
state of every function (and of the top-level features, where the proto has them), written with
deterministic serialization like the rest of the package. The texts come from the contract
function (`feature_descriptions`, no coremltools needed) and say what an app must feed: the BOS
rule, padding, positions, the cache layout. The same texts are in the convert report and the
release's `runtime_config.json` (docs/release.md).
"""

from __future__ import annotations

from pathlib import Path

from compiler.planning.params import FunctionP, PackageMetadataP, SpecialTokenP, TensorP

CACHE_AXES = "[layers, batch, kv heads, positions, head dim]"


def _shape(t: TensorP, seq_lens: list[int]) -> str:
    dims = ", ".join(str(d) for d in t.shape)
    if any(isinstance(d, str) for d in t.shape):
        return f"[{dims}] ({', '.join(str(d) for d in t.shape if isinstance(d, str))} in {', '.join(map(str, seq_lens))})"
    return f"[{dims}]"


def _id(special: dict[str, SpecialTokenP], name: str) -> str:
    return f"{name} ({special[name].id})" if name in special else name


def feature_descriptions(fn: FunctionP, special: dict[str, SpecialTokenP]) -> dict[str, dict[str, str]]:
    """{"inputs"|"outputs"|"states": {feature name: one line}} for one contract function."""
    length = fn.seq_lens[0] if len(fn.seq_lens) == 1 else "T"
    span = f"0..{length - 1}" if isinstance(length, int) else "0..T-1"  # the positions a prefill writes
    cache = fn.states[0].shape[3] if fn.states else next(
        (t.shape[3] for t in fn.inputs if t.name == "key_cache"), None)
    stateful = bool(fn.states)
    out: dict[str, dict[str, str]] = {"inputs": {}, "outputs": {}, "states": {}}
    for t in fn.inputs:
        shape = f"{t.dtype} {_shape(t, fn.seq_lens)}"
        if t.name == "input_ids" and fn.role == "prefill":
            text = (f"Token ids, {shape}: {_id(special, 'bos')} first, then the prompt's tokens, right-padded with "
                    f"{_id(special, 'pad')} to {length}")
            text += f"; writes cache positions {span} (decode overwrites the padded ones)." if (stateful or cache) else "."
        elif t.name == "input_ids" and fn.role == "verify":
            text = (f"The last accepted token then {length - 1} drafted ones, {shape}, at positions `position`.."
                    f"`position`+{length - 1}; a rejected draft's cache entries are overwritten by the next call, never read.")
        elif t.name == "input_ids":
            text = f"The next token id, {shape}, at `position`."
        elif t.name == "position":
            text = (f"Position of input_ids in the sequence, {shape}: 0-based, the first decode step is the number of "
                    f"prompt tokens (bos included); below {cache}.")
        elif t.name in ("key_cache", "value_cache"):
            what = "keys" if t.name == "key_cache" else "values"
            text = (f"KV cache {what}, {shape} {CACHE_AXES}: positions below `position` filled (prefill's "
                    f"present_{what}, then each decode's).")
        else:  # pragma: no cover - the contract has no other inputs
            text = f"{t.name}, {shape}."
        out["inputs"][t.name] = text
    for t in fn.outputs:
        shape = f"{t.dtype} {_shape(t, fn.seq_lens)}"
        if t.name == "logits" and fn.role == "prefill":
            text = (f"Next-token scores, {shape}: row i scores the token after position i; read the row of the "
                    "last real (unpadded) token.")
        elif t.name == "logits" and fn.role == "verify":
            text = (f"Next-token scores, {shape}: row i scores the token after `position`+i; accept drafted token i+1 "
                    "while it is row i's argmax, then take the first disagreeing row's argmax.")
        elif t.name == "logits":
            text = f"Next-token scores, {shape}: the token after `position`."
        elif t.name in ("present_keys", "present_values") and fn.role == "prefill":
            what = "keys" if t.name == "present_keys" else "values"
            text = f"The {what} of the {length} input positions, {shape} {CACHE_AXES}: copy into cache positions {span}."
        elif t.name in ("present_keys", "present_values"):
            src = "key_cache" if t.name == "present_keys" else "value_cache"
            text = f"The {src.replace('_', ' ')} with `position` written, {shape} {CACHE_AXES}: the next step's {src}."
        else:  # pragma: no cover
            text = f"{t.name}, {shape}."
        out["outputs"][t.name] = text
    for t in fn.states:
        what = "keys" if t.name == "key_cache" else "values"
        writes = f"positions {span}" if fn.role == "prefill" else (
            f"`position`..`position`+{length - 1}" if fn.role == "verify" else "`position`")
        out["states"][t.name] = (f"KV cache {what} (state, shared by prefill and decode), {t.dtype} {_shape(t, fn.seq_lens)} "
                                 f"{CACHE_AXES}: this function writes {writes}; a new state per sequence.")
    return out


def describe_package(package: Path, metadata: PackageMetadataP, functions: list[FunctionP], default: str,
                     special: dict[str, SpecialTokenP]) -> dict[str, dict[str, dict[str, str]]]:
    """Stamp the standard metadata and every feature's description; returns function -> descriptions.

    Raises ValueError naming a feature the contract does not describe (the package is not the contract's)."""
    from runtime.coreml.package import load_spec, write_spec

    texts = {fn.name: feature_descriptions(fn, special) for fn in functions}
    spec = load_spec(package)
    desc = spec.description
    desc.metadata.author = metadata.author
    desc.metadata.license = metadata.license
    desc.metadata.versionString = metadata.version
    desc.metadata.shortDescription = metadata.description

    def fill(features, known: dict[str, str], where: str) -> None:
        for f in features:
            if f.name not in known:
                raise ValueError(f"{where}: feature {f.name!r} has no description (the contract names {sorted(known)})")
            f.shortDescription = known[f.name]

    for fd in desc.functions:
        if fd.name not in texts:
            raise ValueError(f"function {fd.name!r} is not a contract function ({sorted(texts)})")
        for kind, features in (("inputs", fd.input), ("outputs", fd.output), ("states", fd.state)):
            fill(features, texts[fd.name][kind], f"function {fd.name}")
    if default in texts:  # a single-function proto keeps its features at the top level
        for kind, features in (("inputs", desc.input), ("outputs", desc.output), ("states", desc.state)):
            fill(features, texts[default][kind], "model")
    write_spec(package, spec)
    return texts
