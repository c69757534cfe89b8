"""The student: a Llama-compatible GQA transformer built from `compiler.planning.params.ArchitectureP`.

Parameter names are the canonical module names of `compiler.analysis.modules` (no `model.` prefix), so
the quantization and precision plans address modules directly. Everything is export friendly:
no data-dependent Python control flow and no `.item()`; masks and RoPE angles are computed
in-graph from position tensors, and angles depend only on absolute positions (static RoPE
scalings, `linear` and `llama3`, are one constant factor per frequency).

Entry points sharing one decoder stack:
  - `forward(input_ids, attention_mask)`: training/eval logits, causal + key padding mask.
  - `prefill`, `decode`, `extend` (runtime/model/cache.py): the KV-cache paths.
  - `halt_outputs`, `judge_outputs`: the logits with the halt head's or the judge's verdict head's outputs.
Caches are `[n_layers, B, n_kv_heads, cache_len, d_head]` and are updated functionally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from compiler.analysis.modules import Module, canonical_modules
from compiler.planning.params import ArchitectureP, RopeScalingP
from compiler.schema.architecture import Architecture, LinearScaling, Llama3Scaling, Mlp, Norm, Rope

from .cache import KVCache, KVFn, allowed_mask, right_padded, span  # noqa: F401  (allowed_mask, span: public here too)

# Masked scores are replaced (not offset) by this: finite in fp16, and exp() of it underflows to 0.
MASK_VALUE = -1.0e4
INIT_STD = 0.02

# (k, v) of the current tokens -> the (k, v) to attend over (identity, or a cache write).


def schema_architecture(arch: ArchitectureP) -> Architecture:
    """The spec-level `Architecture` equivalent to the flattened job parameters."""
    return Architecture(
        d_model=arch.d_model, n_layers=arch.n_layers, n_heads=arch.n_heads, n_kv_heads=arch.n_kv_heads,
        d_head=arch.d_head, mlp=Mlp(kind="swiglu", hidden=arch.mlp_hidden), vocab_size=arch.vocab_size,
        norm=Norm(kind="rmsnorm", eps=arch.norm_eps), rope=Rope(theta=arch.rope_theta, scaling=_schema_scaling(arch)),
        max_context=arch.max_context, tie_embeddings=arch.tie_embeddings, attention_bias=arch.attention_bias,
        qk_norm=arch.qk_norm,
    )


def _schema_scaling(arch: ArchitectureP):
    s = arch.rope_scaling
    if s is None:
        return "none"
    if s.rope_type == "linear":
        return LinearScaling(kind="linear", factor=s.factor)
    return Llama3Scaling(kind="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                         original_max_context=s.original_max_position_embeddings)


def canonical(arch: ArchitectureP) -> list[Module]:
    """`compiler.analysis.modules.canonical_modules` for job parameters."""
    return canonical_modules(schema_architecture(arch))


class RMSNorm(nn.Module):
    """RMSNorm with a weight only; the statistics are computed in fp32. Under autocast the output is
    cast to the autocast dtype here, so the matmuls that read it share one low-precision copy."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(x.dtype)
        if torch.is_autocast_enabled(x.device.type):  # cast once here, not once per consuming matmul (q, k, v)
            out = out.to(torch.get_autocast_dtype(x.device.type))
        return out


def scaled_inv_freq(inv_freq: Tensor, scaling: RopeScalingP | None) -> Tensor:
    """A static RoPE scaling applied to the inverse frequencies, in-graph from scalar constants
    (no tensor constant or buffer enters the exported program).

    `linear`: every frequency divided by factor. `llama3` (transformers `_compute_llama3_parameters`):
    wavelengths longer than original/low_freq_factor divided by factor, shorter than
    original/high_freq_factor kept, in between interpolated with s = (original/wavelength - low)/(high - low)."""
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq * (1.0 / scaling.factor)
    old, low, high, factor = (float(scaling.original_max_position_embeddings), scaling.low_freq_factor,
                              scaling.high_freq_factor, scaling.factor)
    ratio = inv_freq * (old / (2 * math.pi))  # original context / wavelength
    smooth = (ratio - low) * (1.0 / (high - low))
    mid = inv_freq * ((1.0 - smooth) * (1.0 / factor) + smooth)
    # wavelength > old/low <=> ratio < low; wavelength < old/high <=> ratio > high
    return torch.where(ratio < low, inv_freq * (1.0 / factor), torch.where(ratio > high, inv_freq, mid))


def rope_cos_sin(positions: Tensor, d_head: int, theta: float, dtype: torch.dtype,
                 scaling: RopeScalingP | None = None) -> tuple[Tensor, Tensor]:
    """cos/sin `[B|1, T, d_head]` from absolute positions `[B|1, T]`, computed in fp32 in-graph
    (under a static `scaling` when given)."""
    exponent = torch.arange(0, d_head, 2, dtype=torch.float32, device=positions.device) / d_head
    inv_freq = theta ** -exponent  # not 1 / x: coremltools maps torch reciprocal to MIL inverse(epsilon=1e-4)
    inv_freq = scaled_inv_freq(inv_freq, scaling)
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


class RotaryEmbedding(nn.Module):
    """RoPE tables as a module of their own (no parameters): its ops carry the module path
    `rotary_emb`, which the converter always keeps in fp32. In fp16 the inverse frequencies round
    to 2^-11 relative (10000^(-1/16) = 0.56234 -> 0.5625) and the angle error grows with position:
    the toy's quantization SNR fell from 55 to 47 dB between 64 and 256 tokens."""

    def __init__(self, d_head: int, theta: float, scaling: RopeScalingP | None = None) -> None:
        super().__init__()
        self.d_head, self.theta, self.scaling = d_head, theta, scaling

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(positions, self.d_head, self.theta, dtype, self.scaling)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x `[B, H, T, D]`; cos/sin `[B|1, T, D]`."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class Attention(nn.Module):
    def __init__(self, arch: ArchitectureP) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head = arch.n_heads, arch.n_kv_heads, arch.d_head
        bias = arch.attention_bias
        self.q_proj = nn.Linear(arch.d_model, arch.n_heads * arch.d_head, bias=bias)
        self.k_proj = nn.Linear(arch.d_model, arch.n_kv_heads * arch.d_head, bias=bias)
        self.v_proj = nn.Linear(arch.d_model, arch.n_kv_heads * arch.d_head, bias=bias)
        self.o_proj = nn.Linear(arch.n_heads * arch.d_head, arch.d_model, bias=False)
        # Qwen3: RMSNorm over each head's features of q and k, before RoPE
        self.q_norm = RMSNorm(arch.d_head, arch.norm_eps) if arch.qk_norm else None
        self.k_norm = RMSNorm(arch.d_head, arch.norm_eps) if arch.qk_norm else None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor | None, kv_fn: KVFn, sdpa: bool = False) -> Tensor:
        """`allowed` None: causal over the current tokens (sdpa only)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.d_head)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.d_head)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.d_head).transpose(1, 2)
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        k, v = kv_fn(k, v)
        k, v = k.to(q.dtype), v.to(q.dtype)
        if sdpa:
            mask = None if allowed is None else torch.where(allowed, 0.0, MASK_VALUE).to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=allowed is None,
                                                 enable_gqa=self.n_heads != self.n_kv_heads)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_head))
        if allowed is None:
            raise ValueError("eager attention needs an explicit mask")
        rep = self.n_heads // self.n_kv_heads
        s = k.shape[2]
        k = k[:, :, None].expand(b, self.n_kv_heads, rep, s, self.d_head).reshape(b, self.n_heads, s, self.d_head)
        v = v[:, :, None].expand(b, self.n_kv_heads, rep, s, self.d_head).reshape(b, self.n_heads, s, self.d_head)
        scores = torch.matmul(q, k.transpose(2, 3)) * (self.d_head ** -0.5)
        scores = torch.where(allowed, scores, torch.full_like(scores, MASK_VALUE))
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.n_heads * self.d_head)
        return self.o_proj(out)


class SwiGLU(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, arch: ArchitectureP) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(arch.d_model, arch.mlp_hidden, bias=False)
        self.up_proj = nn.Linear(arch.d_model, arch.mlp_hidden, bias=False)
        self.down_proj = nn.Linear(arch.mlp_hidden, arch.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ArchitectureP) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.d_model, arch.norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mlp = SwiGLU(arch)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, allowed: Tensor | None, kv_fn: KVFn, sdpa: bool = False) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, allowed, kv_fn, sdpa)
        return x + self.mlp(self.post_attention_layernorm(x))


def _identity_kv(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    return k, v


class Student(KVCache, nn.Module):
    """The student LM; `Student(arch, seed)` is deterministic for a given seed and device."""

    def __init__(self, arch: ArchitectureP, seed: int = 0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if arch.d_model != arch.n_heads * arch.d_head or arch.n_heads % arch.n_kv_heads or arch.d_head % 2:
            raise ValueError(f"inconsistent architecture: {arch}")
        self.arch = arch
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.n_layers))
        self.norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.rotary_emb = RotaryEmbedding(arch.d_head, arch.rope_theta, arch.rope_scaling)
        self.lm_head: nn.Linear | None = None if arch.tie_embeddings else nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        # a judge's verdict head on the final normed hidden states: the score, then one logit per clause
        self.judge_head: nn.Linear | None = nn.Linear(arch.d_model, arch.judge_outputs) if arch.judge_outputs else None
        # the halt head: one logit per position, that the next token ends the turn (docs/roles.md#the-halt-head)
        self.halt_head: nn.Linear | None = nn.Linear(arch.d_model, 1) if arch.halt_head else None
        if self.judge_head is not None and self.lm_head is not None:
            # a judge trains through its verdict head only: an untied vocabulary head would get no gradient, which
            # DDP refuses at the next step, so it is frozen (kept as initialised or loaded; AdamW skips it)
            self.lm_head.weight.requires_grad_(False)
        self.to(device=device)
        self.init_weights(seed)
        self.to(dtype=dtype)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """Normal(0, 0.02) matrices (residual outputs scaled by 1/sqrt(2 n_layers)), unit norms, zero biases."""
        if self.embed_tokens.weight.is_meta:  # built to be loaded (`load_student`): nothing to draw
            return
        g = torch.Generator(device=self.embed_tokens.weight.device).manual_seed(seed)
        out_std = INIT_STD / math.sqrt(2 * self.arch.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("layernorm.weight", "_norm.weight")) or name == "norm.weight":
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                std = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else INIT_STD
                p.normal_(0.0, std, generator=g)

    def configure(self, attention: str = "eager", checkpointing: bool = False) -> Student:
        """How `forward` computes (the training jobs' `training.compute`): `attention` "sdpa" or "eager",
        `checkpointing` recomputes each decoder layer in the backward pass. prefill, decode and the export
        wrappers always run eager attention without recomputation (what the converter and parity see)."""
        if attention not in ("sdpa", "eager"):
            raise ValueError(f"unknown attention {attention!r}")
        self.attention, self.checkpointing = attention, checkpointing
        return self

    attention: str = "eager"
    checkpointing: bool = False

    def output_weight(self) -> Tensor:
        """The output projection's weight `[V, d_model]` (the embedding when tied; fake-quantized under QAT)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _vocab(self, h: Tensor) -> Tensor:
        """The vocabulary logits of final normed hidden states."""
        return F.linear(h, self.embed_tokens.weight) if self.lm_head is None else self.lm_head(h)

    def _logits(self, h: Tensor, halt: bool = False) -> Any:
        """Logits of the final hidden states; with `halt`, (logits, the halt head's logits `[B, T, 1]`)."""
        h = self.norm(h)
        logits = self._vocab(h)
        if halt:
            if self.halt_head is None:
                raise ValueError("this model has no halt head (architecture halt_head is false)")
            return logits, self.halt_head(h)
        return logits

    def _layers(self, input_ids: Tensor, positions: Tensor, allowed: Tensor | None, kv_fns: list[KVFn] | None,
                sdpa: bool = False, recompute: bool = False) -> Tensor:
        h = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(positions, h.dtype)
        for i, layer in enumerate(self.layers):
            kv_fn = kv_fns[i] if kv_fns is not None else _identity_kv
            if recompute:
                h = checkpoint(layer, h, cos, sin, allowed, kv_fn, sdpa, use_reentrant=False)
            else:
                h = layer(h, cos, sin, allowed, kv_fn, sdpa)
        return h

    def run_layers(self, input_ids: Tensor, positions: Tensor, allowed: Tensor,
                   kv_fns: list[KVFn] | None = None, halt: bool = False) -> Any:
        """Logits for `input_ids` at `positions` under the `allowed` attention mask; `kv_fns[i]`
        maps layer i's new (k, v) to the (k, v) it attends to (a cache write and read). The eager
        forward of KV-cache decode and the export wrappers. `halt`: (logits, halt logits)."""
        return self._logits(self._layers(input_ids, positions, allowed, kv_fns), halt)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, head: Callable[[Tensor, Tensor], Any] | None = None) -> Any:
        """Logits `[B, T, V]`; attention_mask (1 real, 0 pad) hides padded keys. With `head`, returns
        `head(final normed hidden states [B, T, d_model], output weight [V, d_model])` instead (the
        training loss, chunked so the logits never exist whole; runtime/train/head.py): it runs inside
        forward, where FSDP2 has the root's parameters gathered."""
        t = input_ids.shape[1]
        pos = position_ids if position_ids is not None else torch.arange(t, device=input_ids.device)[None]
        sdpa = self.attention == "sdpa"
        if sdpa and position_ids is None and right_padded(attention_mask):
            allowed = None  # causal alone: every key a real query may see is real (pads only follow real tokens)
        else:
            allowed = allowed_mask(pos, pos, attention_mask)
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        h = self._layers(input_ids, pos, allowed, None, sdpa, recompute)
        if head is None:
            return self._logits(h)
        extra = {name: m for name, m in (("judge_head", self.judge_head), ("halt_head", self.halt_head)) if m is not None}
        return head(self.norm(h), self.output_weight(), **extra)

    def final_states(self, input_ids: Tensor) -> Tensor:
        """The final normed hidden states `[B, T, d_model]` of unpadded rows, with sdpa's causal attention (no
        `[T, T]` scores kept) and no vocabulary logits: what the eval reads the heads from."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return self.norm(self._layers(input_ids, pos, None, None, sdpa=True))

    def _with_head(self, head: nn.Linear | None, what: str, input_ids: Tensor,
                   position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The logits `[B, T, V]` and `head`'s outputs at every position (eager, causal)."""
        if head is None:
            raise ValueError(f"this model has no {what}")
        t = input_ids.shape[1]
        pos = position_ids if position_ids is not None else torch.arange(t, device=input_ids.device)[None]
        h = self.norm(self._layers(input_ids, pos, allowed_mask(pos, pos), None))
        return self._vocab(h), head(h)

    def halt_outputs(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and halt logits `[B, T, 1]` at every position (parity's reference, speculative drafting)."""
        return self._with_head(self.halt_head, "halt head (architecture halt_head is false)", input_ids)

    def judge_outputs(self, input_ids: Tensor, position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """A judge's logits and verdict head outputs `[B, T, judge_outputs]` at every position (the export wrapper,
        parity's reference)."""
        return self._with_head(self.judge_head, "verdict head (architecture judge_outputs is 0)", input_ids,
                               position_ids)


def to_hf_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Student keys -> `LlamaForCausalLM` keys (`model.` prefix; tied: lm_head shares embed_tokens)."""
    out = {k if k == "lm_head.weight" else f"model.{k}": v for k, v in state_dict.items()}
    out.setdefault("lm_head.weight", state_dict["embed_tokens.weight"])
    return out


def from_hf_state_dict(state_dict: Mapping[str, Tensor], tie_embeddings: bool) -> dict[str, Tensor]:
    """`LlamaForCausalLM` keys -> Student keys; drops rotary buffers, and lm_head when tied."""
    out: dict[str, Tensor] = {}
    for k, v in state_dict.items():
        if "rotary_emb" in k:
            continue
        if k == "lm_head.weight":
            if not tie_embeddings:
                out[k] = v
        elif k.startswith("model."):
            out[k[len("model."):]] = v
        else:
            raise KeyError(f"unexpected key in a Llama state dict: {k!r}")
    return out
