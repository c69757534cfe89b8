"""Per-rank training memory (ddp or fsdp2) and training FLOPs, from the architecture's dimensions.

Pure arithmetic on integers, no torch. The formulas follow what the runtime does
(`runtime/train/loop.py`, `runtime/train/head.py`, `runtime/model/student.py`) under the spec's
`training.compute` (`Kernels` here), and tests/runtime/test_memory_estimate.py holds the
activation part within 5% of what autograd keeps for every combination.

Symbols: N parameters, W ranks (nodes x nproc), b micro_batch, s seq_len, L n_layers,
d d_model (= n_heads x d_head), kv = n_kv_heads x d_head, m mlp.hidden, V vocab_size,
H n_heads, c = min(loss_chunk, s); a = activation bytes (4 fp32, 2 bf16); r = 4, the residual
stream and norm statistics (fp32 under autocast too).

  model state  ddp:   N x (weights + grads + optimizer) bytes: 4 + 4 + 8 (fp32 master weights,
                      gradients and AdamW state in both precisions)
               fsdp2: ceil(N / W) x (the same) + 2 x largest unit x gathered bytes (the unit being
                      gathered and the one prefetched; a unit is one decoder layer, or the root:
                      embedding, final norm and lm_head; bf16 gathers under the bf16 policy)
  cast weights bf16 autocast (ddp): the bf16 copy of every linear weight that autograd keeps for
                 the backward (2 x the layers' linear weights; the lm_head's too when the loss
                 is not chunked); with recomputation only one layer's copies, while it runs
  qat          + the fake-quantized copy of every quantized linear weight, which the linear
                 layer keeps for its backward (never sharded)
  activations  per layer and token: each RMSNorm keeps its input and normalized input (r + 4)
                 and its output (a), twice; sdpa keeps the rotated queries, its output, the keys
                 and values (2a d + 2a kv) and a logsumexp per head (4 H); eager keeps the
                 queries, the keys and values expanded to every head and its output (4a d);
                 the MLP keeps gate, silu(gate), up and their product (4a m):
                   sdpa  b s (2(r + 4 + a) d + 2a d + 2a kv + 4a m + 4 H)
                   eager b s (2(r + 4 + a) d + 4a d + 4a m)
                 plus the final norm b s (r + 4 + a) d. Recompute: the layers' inputs b s L r d
                 and the final norm are kept; one layer's activations are live again while it
                 runs backward (transient)
  scores       eager only: b L H s^2 x (4 + a when a != 4): the fp32 softmax and its cast
  logits       loss_chunk 0: b s V x 4 x (1 + tempered copy for a dense kl + knock-out copy for
                 a sparse kl): the fp32 logits the loss reads, kept for the backward.
                 loss_chunk > 0: nothing kept; one chunk's b c V x (a + 3 x 4) is live while
                 it is recomputed (transient)
  FLOPs/token  6 N + 12 L q s (attention's two matmuls, forward and backward, over the
                 full s x s square; flash kernels skip the masked half, this estimate does not)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LOSS_VALUES = 11  # fp32 values per position the toy's eight loss terms keep (runtime/train/losses.py)
RESIDUAL_BYTES = 4  # the residual stream and norm statistics stay fp32 under autocast
STAT_BYTES = 4  # norm statistics, attention logsumexp and softmax, loss log-probs: fp32
STATE_BYTES = {"weights": 4, "grads": 4, "optimizer": 8}  # fp32 master weights, gradients, AdamW exp_avg + exp_avg_sq
ACTIVATION_BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class Kernels:
    """`training.compute` as the estimate reads it, plus how many fp32 copies of the logits the loss keeps."""

    precision: str = "fp32"
    attention: str = "sdpa"
    recompute: bool = False
    loss_chunk: int = 1024  # 0: whole logits kept
    logit_copies: int = 2  # fp32 [b, s, V] tensors an unchunked loss keeps (logits + tempered copy of a dense kl)
    top_k: int = 0  # teacher targets per position the loss keeps

    @property
    def activation_bytes(self) -> int:
        return ACTIVATION_BYTES[self.precision]


FP32_EAGER = Kernels(precision="fp32", attention="eager", recompute=False, loss_chunk=0)  # the runtime before training.compute


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
    n_kv_heads: int | None = None  # None: n_heads
    layer_linear_params: int = 0  # the decoder layers' linear weights (what bf16 autocast copies)
    head_params: int = 0  # the output projection's weights (lm_head, or the tied embedding)

    @property
    def kv(self) -> int:
        return (self.n_kv_heads or self.n_heads) * self.d_head


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at the peak of a training step (one micro-batch in flight)."""

    weights: int
    grads: int
    master: int  # kept for the report's columns: the fp32 parameters are the master weights (0)
    optimizer: int
    gathered: int  # fsdp2: unsharded units
    qat_weights: int
    cast_weights: int  # bf16 autocast: low-precision weight copies kept for the backward
    activations: int
    attention_scores: int
    logits: int
    transient: int = 0  # live only during part of the backward: a recomputed layer, a loss chunk

    @property
    def state(self) -> int:
        """What the strategy decides, whatever the kernels: weights, gradients, optimizer, gathers."""
        return self.weights + self.grads + self.master + self.optimizer + self.gathered + self.qat_weights

    @property
    def per_token(self) -> int:
        """What autograd keeps for the backward pass (grows with tokens), cast weights included."""
        return self.activations + self.attention_scores + self.logits + self.cast_weights

    @property
    def total(self) -> int:
        return self.state + self.per_token + self.transient


def layer_activation_bytes(d: Dims, k: Kernels) -> int:
    """Bytes one decoder layer keeps per token (no recomputation)."""
    a, r = k.activation_bytes, RESIDUAL_BYTES
    norms = 2 * ((r + STAT_BYTES + a) * d.d_model + STAT_BYTES)  # + the reciprocal RMS of each token
    if k.attention == "sdpa":
        attention = 2 * a * d.d_model + 2 * a * d.kv + STAT_BYTES * d.n_heads
    else:
        attention = 4 * a * d.d_model
    return norms + attention + 4 * a * d.mlp_hidden


def rank_memory(d: Dims, strategy: str, world: int, micro_batch: int, seq_len: int, *, qat: bool = False,
                kernels: Kernels = Kernels()) -> RankMemory:
    if strategy not in ("ddp", "fsdp2", "none"):
        raise ValueError(f"unknown strategy {strategy!r}")
    k = kernels
    a = k.activation_bytes
    sharded = strategy == "fsdp2"
    held = math.ceil(d.params / world) if sharded else d.params
    tokens = micro_batch * seq_len
    per_layer = tokens * layer_activation_bytes(d, k)
    final_norm = tokens * ((RESIDUAL_BYTES + STAT_BYTES + a) * d.d_model + STAT_BYTES)
    # per position: the loss's fp32 values (about 12: logsumexps, target logits, masks' products), the
    # teacher's top-k probabilities and the token ids; per sequence: the fp32 RoPE cos and sin tables
    bookkeeping = tokens * (LOSS_VALUES * STAT_BYTES + 8 + STAT_BYTES * k.top_k) + 2 * seq_len * d.d_head * STAT_BYTES
    if k.recompute:
        activations = tokens * d.n_layers * RESIDUAL_BYTES * d.d_model + final_norm + bookkeeping
    else:
        activations = d.n_layers * per_layer + final_norm + bookkeeping
    score_bytes = STAT_BYTES + (a if a != STAT_BYTES else 0)
    per_layer_scores = micro_batch * d.n_heads * seq_len * seq_len * score_bytes if k.attention == "eager" else 0
    scores = per_layer_scores * (0 if k.recompute else d.n_layers)
    autocast_copies = k.precision != "fp32" and not sharded  # fsdp2's bf16 policy gathers bf16 parameters: nothing to cast
    layer_cast = 2 * d.layer_linear_params // max(1, d.n_layers) if autocast_copies else 0
    cast = (0 if k.recompute else layer_cast * d.n_layers) + (2 * d.head_params if autocast_copies and k.loss_chunk == 0 else 0)
    if k.loss_chunk == 0:
        logits, chunk = tokens * d.vocab_size * STAT_BYTES * k.logit_copies, 0
    else:
        logits, chunk = 0, micro_batch * min(k.loss_chunk, seq_len) * d.vocab_size * (a + 3 * STAT_BYTES)
    recomputed = per_layer + per_layer_scores + layer_cast if k.recompute else 0
    gathered_bytes = 2 if sharded and k.precision == "bf16" else STATE_BYTES["weights"]
    return RankMemory(
        weights=held * STATE_BYTES["weights"],
        grads=held * STATE_BYTES["grads"],
        master=0,
        optimizer=held * STATE_BYTES["optimizer"],
        gathered=2 * d.largest_unit * gathered_bytes if sharded else 0,
        qat_weights=d.qat_params * STATE_BYTES["weights"] if qat else 0,
        cast_weights=cast,
        activations=activations,
        attention_scores=scores,
        logits=logits,
        transient=max(recomputed, chunk),
    )


def state_bytes_per_param() -> int:
    return sum(STATE_BYTES.values())


def flops_per_token(d: Dims, seq_len: int) -> int:
    """Forward and backward FLOPs per trained token: 6N for the weights, 12 L q s for attention."""
    return 6 * d.params + attention_flops_per_token(d, seq_len)


def attention_flops_per_token(d: Dims, seq_len: int) -> int:
    return 12 * d.n_layers * d.n_heads * d.d_head * seq_len


def min_fsdp2_ranks(d: Dims, memory_bytes: float, *, qat: bool = False, kernels: Kernels = Kernels(),
                    limit: int = 1 << 16) -> int | None:
    """The fewest ranks over which the fsdp2 model state fits `memory_bytes`; None if no count does."""
    fixed = unsharded_bytes(d, qat=qat, kernels=kernels)
    room = memory_bytes - fixed
    if room <= 0:
        return None
    per_param = state_bytes_per_param()
    world = max(1, math.ceil(d.params * per_param / room))
    while world <= limit:
        if math.ceil(d.params / world) * per_param <= room:
            return world
        world += 1
    return None


def unsharded_bytes(d: Dims, *, qat: bool = False, kernels: Kernels = Kernels()) -> int:
    """What no number of fsdp2 ranks shards: two gathered units (and QAT's fake-quantized copies)."""
    gathered = 2 if kernels.precision == "bf16" else STATE_BYTES["weights"]
    return 2 * d.largest_unit * gathered + (d.qat_params * STATE_BYTES["weights"] if qat else 0)
