"""`architecture`: the student's shape (and the subset a trained teacher uses)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag

from .base import F, PosFloat, PosInt, SpecModel

# Sanity caps: far above any on-device model, low enough that validation stays instant.
Width = Annotated[int, Field(gt=0, le=1 << 18)]
Count = Annotated[int, Field(gt=0, le=4096)]


class Mlp(SpecModel):
    kind: Literal["swiglu"] = F("MLP kind; SwiGLU (gate, up, down projections).")
    hidden: Width = F("MLP inner width, written out explicitly (never derived as 4 x d_model).", unit="features")


class Norm(SpecModel):
    kind: Literal["rmsnorm"] = F("Normalization kind.")
    eps: PosFloat = F("Epsilon added to the mean square before rsqrt.")


class LinearScaling(SpecModel):
    kind: Literal["linear"] = F("Position interpolation: every inverse frequency divided by factor (transformers rope_type 'linear').")
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = F("Context extension factor.")


class Llama3Scaling(SpecModel):
    kind: Literal["llama3"] = F("Llama 3.1-style frequency-dependent scaling (transformers rope_type 'llama3').")
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = F("Scale of the low frequencies.")
    low_freq_factor: PosFloat = F("Wavelengths longer than original_max_context / low_freq_factor are scaled by factor.")
    high_freq_factor: PosFloat = F("Wavelengths shorter than original_max_context / high_freq_factor are kept; in between, interpolated.")
    original_max_context: Annotated[int, Field(gt=0, le=1 << 22)] = F("Context length of the original pretraining.", unit="tokens")


def _scaling_tag(value: Any) -> str | None:
    if value == "none":
        return "none"
    if isinstance(value, dict) and value.get("kind") in ("linear", "llama3"):
        return value["kind"]
    if isinstance(value, (LinearScaling, Llama3Scaling)):
        return value.kind
    return None


RopeScaling = Annotated[
    Union[
        Annotated[Literal["none"], Tag("none")],
        Annotated[LinearScaling, Tag("linear")],
        Annotated[Llama3Scaling, Tag("llama3")],
    ],
    Discriminator(
        _scaling_tag,
        custom_error_type="rope_scaling",
        custom_error_message="RoPE scaling is 'none', {kind: linear, factor} or {kind: llama3, factor, low_freq_factor, "
                             "high_freq_factor, original_max_context}; length-dependent scalings (dynamic, yarn, longrope) "
                             "are refused: every exported shape would compute different angles",
    ),
]


class Rope(SpecModel):
    theta: PosFloat = F("RoPE base frequency.")
    scaling: RopeScaling = F(
        "RoPE scaling: 'none', or a static scaling ({kind: linear, ...} or {kind: llama3, ...}) whose angles depend "
        "only on the absolute position. Length-dependent scalings (transformers 'dynamic', 'yarn', 'longrope') are "
        "refused: they change with the padded length, so every exported shape would compute different angles."
    )


class Heads(SpecModel):
    """Fields shared by the student and a trained teacher."""

    d_model: Width = F("Residual stream width; must equal n_heads * d_head.", unit="features")
    n_layers: Count = F("Number of transformer blocks.", unit="layers")
    n_heads: Count = F("Query heads.", unit="heads")
    n_kv_heads: Count = F("Key/value heads (GQA); must divide n_heads.", unit="heads")
    d_head: Width = F("Width of one attention head.", unit="features")
    mlp: Mlp = F("MLP block.")


class Architecture(Heads):
    vocab_size: Annotated[int, Field(gt=0, le=1 << 22)] = F("Embedding rows; every token id (special tokens included) is below it.", unit="tokens")
    norm: Norm = F("Normalization.")
    rope: Rope = F("Rotary position embedding.")
    max_context: Annotated[int, Field(gt=0, le=1 << 22)] = F("Longest sequence the model is exported for (prefill shapes and KV cache).", unit="tokens")
    tie_embeddings: bool = F("Share embed_tokens and lm_head weights (then lm_head is not a separate module).")
    attention_bias: bool = F("Biases on q_proj, k_proj and v_proj (Qwen2); o_proj and the MLP never have one. Biases stay "
                             "dense (never quantized).", default=False)
    qk_norm: bool = F("Per-head RMSNorm of queries and keys before RoPE (Qwen3: modules self_attn.q_norm and "
                      "self_attn.k_norm, weight [d_head], never quantized).", default=False)


class TeacherArchitecture(Heads):
    """A teacher trained inside the pipeline; vocabulary, norm, RoPE and context come from the student."""
