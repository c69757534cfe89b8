"""The eval job's greedy generation with the KV cache: samples in lockstep batches within a memory budget.

Samples run in lockstep batches over a shared position: one ``prefill`` of the shortest prompt's length (logits
of its last position only), then one ``decode`` per position in which each row feeds either its next forced token
(the rest of its prompt, an injected tool result) or its own greedy choice; rows leave the batch when they stop.
Batches are consecutive samples whose KV caches and prefill fit the budget (`batches`, `row_bytes`). Every row's
tokens depend on that row alone, so the batching does not change what is generated; `check_against_forward`
checks the cached path against full recomputation. runtime/jobs/eval.py runs it and scores what it generates.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

# A cache/forward argmax disagreement is a tie, not a bug, when the two logits are this close.
TIE_TOLERANCE = 1e-4


class EvalJobError(RuntimeError):
    """Inputs the eval job cannot work with (missing tokens or files, mismatched ids, a broken cache path)."""


@dataclass
class Request:
    prompt: list[int]  # [bos] + prompt tokens
    tool_result: list[int] | None  # fed after a generated tool call; None: the sample has no result to feed


@dataclass
class Generation:
    tokens: list[int]  # prompt + everything after it (generated and injected), stop token included
    prompt_len: int
    generated: list[int] = field(default_factory=list)  # positions whose token the model chose
    injected: tuple[int, int] | None = None  # [start, end) positions of the injected tool result
    stop: str = ""  # eos | tool_call_end | max_total_tokens


@dataclass
class _Row:
    gen: Generation
    forced: deque
    result: list[int] | None
    in_answer: bool = False


def _step_row(row: _Row, pos: int, greedy: int, eos: int, call_end: int, max_total: int) -> bool:
    """Write the token at `pos` for one row; True while the row needs its next token."""
    gen = row.gen
    if row.forced:
        gen.tokens.append(row.forced.popleft())
    else:
        gen.tokens.append(greedy)
        gen.generated.append(pos)
        if greedy == eos:
            gen.stop = "eos"
            return False
        if greedy == call_end:
            if row.in_answer or row.result is None:
                gen.stop = "tool_call_end"
                return False
            if len(gen.tokens) + len(row.result) >= max_total:  # no room for the result and one answer token
                gen.stop = "max_total_tokens"
                return False
            gen.injected = (len(gen.tokens), len(gen.tokens) + len(row.result))
            row.forced.extend(row.result)
            row.in_answer = True
    if len(gen.tokens) >= max_total:
        gen.stop = "max_total_tokens"
        return False
    return True


def row_bytes(arch, max_total: int, prompt_len: int, element: int) -> int:
    """What one row of a batch needs: its KV cache for `max_total` positions, and the prefill's largest
    transient (one layer's activations over its prompt, fp32) plus its last position's logits."""
    cache = 2 * arch.n_layers * arch.n_kv_heads * arch.d_head * max_total * element
    prefill = prompt_len * (6 * arch.d_model + 3 * arch.mlp_hidden + 2 * arch.n_heads * arch.d_head) * 4
    return cache + prefill + 2 * arch.vocab_size * 4


def batches(requests: list[Request], active: list[int], need: Callable[[int], int], budget: int | None) -> list[list[int]]:
    """Consecutive requests packed into batches whose rows' needs fit `budget` bytes (None: one batch)."""
    if budget is None:
        return [active] if active else []
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in active:
        n = need(i)
        if n > budget:
            raise EvalJobError(
                f"the eval memory budget ({budget / 2**20:.0f} MiB) is too small for one sample: sample {i} needs "
                f"{n / 2**20:.1f} MiB (a KV cache of max_total_tokens positions and its prefill); raise "
                "training.resources.memory_gb, or lower architecture.max_context")
        if current and used + n > budget:
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        out.append(current)
    return out


@torch.inference_mode()
def generate(model, requests: list[Request], max_total: int, eos: int, call_end: int,
             done: Callable[[int], None] = lambda i: None, budget: int | None = None,
             stats: dict[str, int] | None = None) -> list[Generation]:
    """Greedy generation for every request, in lockstep batches whose KV caches and prefill fit `budget`
    bytes (None: all in one batch; see the module docstring)."""
    rows = [_Row(Generation(tokens=[], prompt_len=len(r.prompt)), deque(r.prompt), r.tool_result) for r in requests]
    active = []
    for i, (row, req) in enumerate(zip(rows, requests)):
        if not req.prompt:
            raise EvalJobError(f"request {i} has an empty prompt (it needs at least bos)")
        if len(req.prompt) >= max_total:
            row.gen.tokens.extend(req.prompt)
            row.gen.stop = "max_total_tokens"
            done(i)
        else:
            active.append(i)
    embed = getattr(model, "embed_tokens", None)  # the student (a test double may stand in)
    element = embed.weight.element_size() if embed is not None else 4
    planned = batches(requests, active, lambda i: row_bytes(model.arch, max_total, len(requests[i].prompt), element), budget)
    for batch in planned:
        _generate_batch(model, rows, requests, batch, max_total, eos, call_end, done)
    if stats is not None:
        stats["batches"] = len(planned)
        stats["largest_batch"] = max((len(b) for b in planned), default=0)
    return [r.gen for r in rows]


def _device(model) -> torch.device:
    """Where the student's weights are (a test double standing in for it runs on the CPU)."""
    embed = getattr(model, "embed_tokens", None)
    return embed.weight.device if embed is not None else torch.device("cpu")


def _generate_batch(model, rows: list[_Row], requests: list[Request], active: list[int], max_total: int, eos: int,
                    call_end: int, done: Callable[[int], None]) -> None:
    device = _device(model)
    m = min(len(requests[i].prompt) for i in active)
    for i in active:
        for _ in range(m):
            rows[i].gen.tokens.append(rows[i].forced.popleft())
    k_cache, v_cache = model.empty_cache(len(active), max_total)
    ids = torch.tensor([rows[i].gen.tokens for i in active], dtype=torch.long, device=device)
    logits, k_cache, v_cache = model.prefill(ids, k_cache, v_cache, last_only=True)
    pos = m
    while active:
        greedy = logits[:, -1].argmax(-1).tolist()
        keep, feed = [], []
        for b, i in enumerate(active):
            if _step_row(rows[i], pos, greedy[b], eos, call_end, max_total):
                keep.append(b)
                feed.append(rows[i].gen.tokens[-1])
            else:
                done(i)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            k_cache, v_cache = k_cache.index_select(1, index), v_cache.index_select(1, index)
            active = [active[b] for b in keep]
        logits, k_cache, v_cache = model.decode(torch.tensor(feed, dtype=torch.long, device=device)[:, None],
                                                torch.tensor([pos], dtype=torch.long, device=device), k_cache, v_cache)
        pos += 1


@torch.inference_mode()
def check_against_forward(model, gen: Generation, label: str) -> dict[str, int]:
    """Each token the cached path chose must be the argmax of full `forward` over the same prefix.

    One causal forward over the finished sequence gives every prefix's logits at once, so this is
    greedy decoding by full recomputation, step by step. A disagreement within `TIE_TOLERANCE`
    (relative to the logit scale) is a tie broken differently by rounding and is counted."""
    if not gen.generated:
        return {"positions": 0, "ties": 0}
    logits = model(torch.tensor([gen.tokens], dtype=torch.long, device=_device(model)))[0].float()
    wants = logits.argmax(-1).tolist()
    ties = 0
    for pos in gen.generated:
        want, got = wants[pos - 1], gen.tokens[pos]
        if want == got:
            continue
        row = logits[pos - 1]
        gap = float(row[want] - row[got])
        if gap > TIE_TOLERANCE * max(1.0, float(row.abs().max())):
            raise EvalJobError(
                f"{label}: greedy decoding with the KV cache chose token {got} at position {pos}, but full forward "
                f"recomputation chooses {want} (logit gap {gap:.3g}): a bug in the cache path (prefill/decode)")
        ties += 1
    return {"positions": len(gen.generated), "ties": ties}


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting (workers are long-lived).

    A decode step is one token per row of a small model: threads cost more in synchronisation
    than they save, and when other jobs share the cores their spin-waiting makes generation
    ten times slower. One thread also keeps greedy outputs independent of the core count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
