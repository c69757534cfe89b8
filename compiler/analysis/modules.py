"""Canonical, Llama-compatible module names and weight shapes, computed without torch."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from compiler.schema.architecture import Architecture


@dataclass(frozen=True)
class Module:
    name: str
    kind: str  # embedding | linear | norm
    shape: tuple[int, ...]  # weight shape as torch stores it: linear [out, in]
    bias: int = 0  # length of the module's bias (`<name>.bias`, always dense); 0: none

    @property
    def params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n + self.bias

    @property
    def in_features(self) -> int:
        return self.shape[-1]

    @property
    def quantizable(self) -> bool:
        return self.kind in ("embedding", "linear")


def canonical_modules(arch: Architecture) -> list[Module]:
    d, v, hd = arch.d_model, arch.vocab_size, arch.d_head
    q_out, kv_out, hidden = arch.n_heads * hd, arch.n_kv_heads * hd, arch.mlp.hidden
    qb, kvb = (q_out, kv_out) if arch.attention_bias else (0, 0)
    out = [Module("embed_tokens", "embedding", (v, d))]
    for i in range(arch.n_layers):
        p = f"layers.{i}"
        out += [
            Module(f"{p}.input_layernorm", "norm", (d,)),
            Module(f"{p}.self_attn.q_proj", "linear", (q_out, d), qb),
            Module(f"{p}.self_attn.k_proj", "linear", (kv_out, d), kvb),
            Module(f"{p}.self_attn.v_proj", "linear", (kv_out, d), kvb),
        ]
        if arch.qk_norm:
            out += [Module(f"{p}.self_attn.q_norm", "norm", (hd,)), Module(f"{p}.self_attn.k_norm", "norm", (hd,))]
        out += [
            Module(f"{p}.self_attn.o_proj", "linear", (d, q_out)),
            Module(f"{p}.post_attention_layernorm", "norm", (d,)),
            Module(f"{p}.mlp.gate_proj", "linear", (hidden, d)),
            Module(f"{p}.mlp.up_proj", "linear", (hidden, d)),
            Module(f"{p}.mlp.down_proj", "linear", (d, hidden)),
        ]
    out.append(Module("norm", "norm", (d,)))
    if not arch.tie_embeddings:
        out.append(Module("lm_head", "linear", (v, d)))
    return out


@lru_cache(maxsize=512)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """'*' matches within one dotted segment, '**' across segments; everything else is literal."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^.]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def matches(pattern: str, name: str) -> bool:
    return glob_regex(pattern).match(name) is not None
