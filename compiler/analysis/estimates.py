"""Per-rank training memory (ddp or fsdp2) and training FLOPs, from the architecture's dimensions.

Pure arithmetic on integers, no torch. The formulas follow what the runtime does today
(`runtime/train/loop.py`, `runtime/model/student.py`): fp32 weights, gradients and AdamW
state, no autocast, no activation recomputation, and eager attention that keeps its softmax
probabilities (`[micro_batch, n_heads, seq_len, seq_len]`, fp32) for the backward pass.
`BF16_MIXED` and `recompute=True` describe the alternatives docs/scale.md compares.

Symbols: N parameters, W ranks (nodes x nproc), b micro_batch, s seq_len, L n_layers,
d d_model, q = n_heads x d_head, m mlp.hidden, V vocab_size, H n_heads.

  model state  ddp:   N x (weights + grads + master + optimizer) bytes
               fsdp2: ceil(N / W) x (the same) + 2 x largest unit x weights bytes
                      (the unit being gathered and the one prefetched; a unit is one
                      decoder layer, or the root: embedding, final norm and lm_head)
  qat          + the fake-quantized copy of every quantized linear weight, which the
                 linear layer keeps for its backward (never sharded)
  activations  b s (L (6d + 4q + 4m) + 3d) x activation bytes: per layer each RMSNorm keeps
                 its input, the normalized input and its output (3d, twice), attention its
                 rotated queries and the keys and values expanded to every head (3q) and its
                 output (q), the MLP gate, silu(gate), up and their product (4m); the final
                 norm 3d (recompute: the layers' inputs b s L d, one layer's, the final norm)
  scores       b L H s^2 x (4 + the cast copy when the compute dtype is not fp32)
  logits       b s V x (activation bytes + 2 x 4): the logits, the fp32 log-probs and
                 the tempered log-probs of the KL term
  FLOPs/token  6 N + 12 L q s (attention's two matmuls, forward and backward, over the
                 full s x s square that eager attention computes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCORE_BYTES = 4  # eager attention's softmax runs in fp32
LOSS_BYTES = 4  # the loss terms take fp32 log-probs of the logits


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter (weights, grads, master, optimizer) and per activation element."""

    name: str
    weights: int
    grads: int
    master: int  # an fp32 master copy of the weights (mixed precision only)
    optimizer: int  # AdamW exp_avg and exp_avg_sq
    activations: int

    @property
    def state(self) -> int:
        return self.weights + self.grads + self.master + self.optimizer


FP32 = Precision("fp32", 4, 4, 0, 8, 4)
BF16_MIXED = Precision("bf16-mixed", 2, 2, 4, 8, 2)
RUNTIME = FP32  # what runtime/train does today; change it with the runtime


@dataclass(frozen=True)
class Dims:
    params: int
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    mlp_hidden: int
    vocab_size: int
    largest_unit: int  # parameters of the biggest fsdp2 unit: a decoder layer or the root (embedding, norm, lm_head)
    qat_params: int = 0  # parameters of the linear weights QAT fake-quantizes


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at the peak of a training step (one micro-batch in flight)."""

    weights: int
    grads: int
    master: int
    optimizer: int
    gathered: int  # fsdp2: unsharded units
    qat_weights: int
    activations: int
    attention_scores: int
    logits: int

    @property
    def state(self) -> int:
        """What the strategy decides, whatever the kernels: weights, gradients, optimizer, gathers."""
        return self.weights + self.grads + self.master + self.optimizer + self.gathered + self.qat_weights

    @property
    def per_token(self) -> int:
        return self.activations + self.attention_scores + self.logits

    @property
    def total(self) -> int:
        return self.state + self.per_token


def rank_memory(d: Dims, strategy: str, world: int, micro_batch: int, seq_len: int, *, qat: bool = False,
                precision: Precision = RUNTIME, eager_attention: bool = True, recompute: bool = False) -> RankMemory:
    if strategy not in ("ddp", "fsdp2", "none"):
        raise ValueError(f"unknown strategy {strategy!r}")
    sharded = strategy == "fsdp2"
    held = math.ceil(d.params / world) if sharded else d.params
    q = d.n_heads * d.d_head
    tokens = micro_batch * seq_len
    per_layer = tokens * (6 * d.d_model + 4 * q + 4 * d.mlp_hidden) * precision.activations
    final_norm = tokens * 3 * d.d_model * precision.activations
    kept = tokens * d.n_layers * d.d_model * precision.activations + per_layer if recompute else d.n_layers * per_layer
    activations = kept + final_norm
    score_bytes = SCORE_BYTES + (precision.activations if precision.activations != SCORE_BYTES else 0)
    per_layer_scores = micro_batch * d.n_heads * seq_len * seq_len * score_bytes if eager_attention else 0
    return RankMemory(
        weights=held * precision.weights,
        grads=held * precision.grads,
        master=held * precision.master,
        optimizer=held * precision.optimizer,
        gathered=2 * d.largest_unit * precision.weights if sharded else 0,
        qat_weights=d.qat_params * precision.weights if qat else 0,
        activations=activations,
        attention_scores=per_layer_scores * (1 if recompute else d.n_layers),
        logits=tokens * d.vocab_size * (precision.activations + 2 * LOSS_BYTES),
    )


def flops_per_token(d: Dims, seq_len: int) -> int:
    """Forward and backward FLOPs per trained token: 6N for the weights, 12 L q s for attention."""
    return 6 * d.params + attention_flops_per_token(d, seq_len)


def attention_flops_per_token(d: Dims, seq_len: int) -> int:
    return 12 * d.n_layers * d.n_heads * d.d_head * seq_len


def min_fsdp2_ranks(d: Dims, memory_bytes: float, *, qat: bool = False, precision: Precision = RUNTIME,
                    limit: int = 1 << 16) -> int | None:
    """The fewest ranks over which the fsdp2 model state fits `memory_bytes`; None if no count does."""
    fixed = 2 * d.largest_unit * precision.weights + (d.qat_params * precision.weights if qat else 0)
    room = memory_bytes - fixed
    if room <= 0:
        return None
    world = max(1, math.ceil(d.params * precision.state / room))
    while world <= limit:
        if math.ceil(d.params / world) * precision.state <= room:
            return world
        world += 1
    return None
