"""Transformers checkpoints in and out of the student: reading a pretrained folder safely,
checking it against the spec's architecture, and mapping its tensors onto canonical names.

A folder is `config.json` plus `*.safetensors` (one file, or shards with
`model.safetensors.index.json`). Pickled weights are never read, remote code never runs and a
config with `auto_map` is refused. Supported families are the transformers-native decoders whose
tensors map one to one onto the student: Llama, Mistral (without a sliding window shorter than
the context), Qwen2 (q/k/v biases: `architecture.attention_bias`) and Qwen3 (per-head q/k norms:
`architecture.qk_norm`). Anything else is refused by name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compiler.planning.params import ArchitectureP, RopeScalingP

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
INDEX = "model.safetensors.index.json"
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class PretrainedError(ValueError):
    """A pretrained folder the student cannot start from; the message names the file, the field and the fix."""


def read_config(folder: Path, what: str) -> dict[str, Any]:
    """config.json of a local folder, refused when it needs remote code or names an unsupported family."""
    path = Path(folder) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PretrainedError(f"{what}: {path} is not a readable config.json ({exc}); point it at a folder written by "
                              "save_pretrained") from exc
    if not isinstance(cfg, dict):
        raise PretrainedError(f"{what}: {path} is not a JSON object")
    if "auto_map" in cfg:
        raise PretrainedError(f"{what}: refusing {folder}: config.json has 'auto_map' (the model needs remote code, which "
                              "modelspec never runs); use a transformers-native checkpoint")
    return cfg


def check_family(cfg: dict[str, Any], folder: Path, what: str) -> str:
    family = cfg.get("model_type")
    if family not in SUPPORTED:
        raise PretrainedError(f"{what}: {folder} is a {family!r} model; the student maps onto {', '.join(SUPPORTED)} "
                              "checkpoints only (their tensors map one to one onto the student's modules)")
    return family


def weight_files(folder: Path, what: str) -> list[Path]:
    """The safetensors files of a folder (the index's shards when there is one); pickles are refused."""
    folder = Path(folder)
    index = folder / INDEX
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PretrainedError(f"{what}: {index} is unreadable ({exc})") from exc
        files = []
        for name in names:
            p = (folder / name).resolve()
            if p.parent != folder.resolve() or not p.name.endswith(".safetensors"):
                raise PretrainedError(f"{what}: {index} names {name!r}, which is not a .safetensors file in {folder}")
            if not p.is_file():
                raise PretrainedError(f"{what}: shard {name} listed in {index} is missing")
            files.append(p)
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for pattern in PICKLES for p in folder.glob(pattern))
        found = f" (found {', '.join(pickles)}: pickled weights are never loaded)" if pickles else ""
        raise PretrainedError(f"{what}: {folder} has no *.safetensors weights{found}; re-save the model with "
                              "save_pretrained(safe_serialization=True)")
    return files


def weights_sha256(files: list[Path]) -> str:
    """sha256 over the weight files' names and bytes (what the package provenance records)."""
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _rope(cfg: dict[str, Any]) -> tuple[float | None, dict[str, Any] | None]:
    """(theta, scaling dict or None) from either config layout (transformers 4 rope_theta/rope_scaling,
    transformers 5 rope_parameters)."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or None
    theta = params.get("rope_theta", cfg.get("rope_theta"))
    rope_type = params.get("rope_type") or (scaling or {}).get("rope_type") or (scaling or {}).get("type") or "default"
    if rope_type == "default":
        return theta, None
    merged = {**(scaling or {}), **params, "rope_type": rope_type}
    return theta, merged


def expected_scaling(s: RopeScalingP | None) -> dict[str, Any] | None:
    if s is None:
        return None
    out = {"rope_type": s.rope_type, "factor": s.factor}
    if s.rope_type == "llama3":
        out |= {"low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings}
    return out


def architecture_mismatches(cfg: dict[str, Any], arch: ArchitectureP) -> list[str]:
    """Every architecture field that differs from config.json, as `config.json KEY X != architecture.FIELD Y`."""
    family = cfg.get("model_type")
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    head_dim = cfg.get("head_dim") or (hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None)
    theta, scaling = _rope(cfg)
    tie_default = {"llama": False, "mistral": False, "qwen2": False, "qwen3": False}[family]
    bias = {"llama": bool(cfg.get("attention_bias", False)), "mistral": False, "qwen2": True,
            "qwen3": bool(cfg.get("attention_bias", False))}[family]
    pairs = [
        ("vocab_size", cfg.get("vocab_size"), "vocab_size", arch.vocab_size),
        ("hidden_size", hidden, "d_model", arch.d_model),
        ("num_hidden_layers", cfg.get("num_hidden_layers"), "n_layers", arch.n_layers),
        ("num_attention_heads", heads, "n_heads", arch.n_heads),
        ("num_key_value_heads", cfg.get("num_key_value_heads", heads), "n_kv_heads", arch.n_kv_heads),
        ("head_dim", head_dim, "d_head", arch.d_head),
        ("intermediate_size", cfg.get("intermediate_size"), "mlp.hidden", arch.mlp_hidden),
        ("rms_norm_eps", cfg.get("rms_norm_eps"), "norm.eps", arch.norm_eps),
        ("rope_theta", theta, "rope.theta", arch.rope_theta),
        ("tie_word_embeddings", bool(cfg.get("tie_word_embeddings", tie_default)), "tie_embeddings", arch.tie_embeddings),
        ("attention_bias" if family != "qwen2" else "model_type qwen2 (q/k/v biases)", bias, "attention_bias", arch.attention_bias),
        ("model_type" if family == "qwen3" else "model_type (q/k norms: qwen3)", family == "qwen3", "qk_norm", arch.qk_norm),
    ]
    out = []
    for key, got, field, want in pairs:
        same = (abs(got - want) <= 1e-12 * max(abs(want), 1.0)) if isinstance(want, float) and isinstance(got, (int, float)) else got == want
        if not same:
            out.append(f"config.json {key} {got} != architecture.{field} {want}")
    want_scaling = expected_scaling(arch.rope_scaling)
    if scaling is not None and scaling["rope_type"] not in ("linear", "llama3"):
        out.append(f"config.json rope scaling {scaling['rope_type']!r} is not supported: only static scalings (linear, "
                   "llama3) give every exported shape the same angles; dynamic, yarn and longrope depend on the length")
    elif (scaling is None) != (want_scaling is None) or (scaling is not None and any(
            scaling.get(k) != v for k, v in want_scaling.items())):
        got = None if scaling is None else {k: scaling.get(k) for k in (want_scaling or scaling) if k != "rope_theta"}
        out.append(f"config.json rope scaling {got} != architecture.rope.scaling {want_scaling or 'none'}")
    if cfg.get("hidden_act", "silu") != "silu":
        out.append(f"config.json hidden_act {cfg.get('hidden_act')!r} != the student's SwiGLU (silu)")
    if cfg.get("mlp_bias"):
        out.append("config.json mlp_bias true: the student's MLP has no biases")
    window = cfg.get("sliding_window")
    uses_window = family == "mistral" or (family in ("qwen2", "qwen3") and cfg.get("use_sliding_window"))
    if uses_window and isinstance(window, int) and window < arch.max_context:
        out.append(f"config.json sliding_window {window} < architecture.max_context {arch.max_context}: the student "
                   "attends over the whole context")
    return out


def to_student_names(tensors: Mapping[str, Any], arch: ArchitectureP, where: str) -> dict[str, Any]:
    """Transformers names (`model.layers.0...`, `lm_head.weight`) -> canonical student names; a tied
    lm_head is dropped; rotary buffers are ignored; anything else unknown is an error."""
    out: dict[str, Any] = {}
    unknown = []
    for name, value in tensors.items():
        if "rotary_emb" in name:
            continue
        if name == "lm_head.weight":
            if not arch.tie_embeddings:
                out[name] = value
        elif name.startswith("model."):
            out[name[len("model."):]] = value
        else:
            unknown.append(name)
    if unknown:
        raise PretrainedError(f"{where}: tensors outside the decoder: {sorted(unknown)[:5]}")
    return out


def load_pretrained(folder: Path, arch: ArchitectureP, expected: Mapping[str, tuple[int, ...]],
                    what: str = "training.init.checkpoint",
                    optional: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """(canonical state dict of torch tensors, facts for the report and provenance).

    `expected`: the student's parameter names and shapes; every one must be present with its shape,
    and nothing else may be (vocabulary rows included: padded rows are kept, never truncated).
    `optional`: name prefixes (the judge's and halt heads) that may be absent, or present in another shape:
    the state then leaves them out, and the student keeps its seeded init for them."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_config(folder, what)
    family = check_family(cfg, folder, what)
    problems = architecture_mismatches(cfg, arch)
    if problems:
        raise PretrainedError(f"{what}: {folder} does not match the spec's architecture:\n  " + "\n  ".join(problems)
                              + "\n  (write the checkpoint's values into the spec's architecture, or pick the checkpoint "
                                "the spec describes)")
    files = weight_files(folder, what)
    tensors: dict[str, Any] = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - a damaged file is one user error whatever safetensors raises
            raise PretrainedError(f"{what}: {path} is not a readable safetensors file ({exc})") from exc
    state = to_student_names(tensors, arch, f"{what}: {folder}")
    for k in [k for k in state if k.startswith(optional) if optional]:
        if k not in expected or tuple(state[k].shape) != tuple(expected[k]):
            del state[k]
    missing = sorted(k for k in set(expected) - set(state) if not (optional and k.startswith(optional)))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}" for k in sorted(set(state) & set(expected))
             if tuple(state[k].shape) != tuple(expected[k])]
    if missing or extra or wrong:
        lines = ([f"missing: {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else "")] if missing else []) + \
                ([f"not in the student: {', '.join(extra[:6])}" + (" ..." if len(extra) > 6 else "")] if extra else []) + \
                ([f"shape: {w}" for w in wrong[:6]])
        raise PretrainedError(f"{what}: the tensors of {folder} do not map onto the student:\n  " + "\n  ".join(lines))
    facts = {"checkpoint": str(folder), "model_type": family, "weights_sha256": weights_sha256(files),
             "files": [p.name for p in files], "vocab_rows": arch.vocab_size,
             "dtype": sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})}
    return state, facts
