"""`architecture`: the student's shape (and the subset a trained teacher uses)."""

from __future__ import annotations

from typing import Literal

from typing import Annotated

from pydantic import Field

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


class Rope(SpecModel):
    theta: PosFloat = F("RoPE base frequency.")
    scaling: Literal["none"] = F(
        "RoPE scaling. Only 'none': dynamic scaling depends on the padded length, so every exported "
        "shape would compute different angles."
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


class TeacherArchitecture(Heads):
    """A teacher trained inside the pipeline; vocabulary, norm, RoPE and context come from the student."""
