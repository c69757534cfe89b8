"""Greedy speculative decoding in torch: a drafter proposes k tokens, the worker checks them in one call.

One step: the drafter extends the sequence greedily by up to k tokens; the worker runs once over the
sequence plus the draft and, at each drafted position, says which token it would have chosen. The
longest prefix of the draft that matches is accepted, then the worker's own token at the first
mismatch (or after the whole draft) is appended: every step emits between 1 and k + 1 tokens, and
the output is, token for token, the worker's own greedy output (tested against `greedy`). Stops at
eos or after `max_new` tokens, as the worker alone would.

Models are callables from token ids ``[1, T]`` to logits ``[1, T, V]`` (the student, or a
transformers model's ``.logits``); every call is a full forward (no cache), the reference behaviour
the exported verify function and the app's cache must reproduce. `speculate_packages` does the same
with two packages and their KV caches (the worker's `verify` function), through a backend of
runtime/speed/backends.py: the reference interpreter anywhere, CoreML on a Mac.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import torch

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Speculation:
    tokens: list[int]  # generated, as the worker alone would generate them
    steps: int = 0  # worker verify calls
    drafted: int = 0  # tokens the drafter proposed
    accepted: int = 0  # of those, the ones the worker agreed with
    per_step: list[int] = field(default_factory=list)  # tokens emitted by each step
    halted: int = 0  # steps whose draft the drafter's halt head cut short of k

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


def _next(model: Model, ids: list[int], device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids], dtype=torch.long, device=device))[0]


def greedy(worker: Model, prompt: list[int], max_new: int, eos: int, device: torch.device | str = "cpu") -> list[int]:
    """The worker alone, one token per call: the output speculative decoding must reproduce."""
    device = torch.device(device)
    ids, out = list(prompt), []
    while len(out) < max_new:
        token = int(_next(worker, ids, device)[-1].argmax())
        out.append(token)
        ids.append(token)
        if token == eos:
            break
    return out


def speculate(drafter: Model, worker: Model, prompt: list[int], k: int, max_new: int, eos: int,
              device: torch.device | str = "cpu", halt: Any = None, threshold: float = 0.5) -> Speculation:
    """`halt`: the drafter with its halt head (ids -> (logits, halt logits)), used instead of `drafter`: a draft
    stops after the token whose halt probability (the head at the position before it) reaches `threshold`, the
    token that ends the worker's turn, instead of drafting past it."""
    device = torch.device(device)
    ids = list(prompt)
    result = Speculation(tokens=[])
    while len(result.tokens) < max_new and (not result.tokens or result.tokens[-1] != eos):
        room = max_new - len(result.tokens)
        draft: list[int] = []
        for i in range(min(k, room)):  # the drafter, greedy, one token per call
            if halt is None:
                token = int(_next(drafter, ids + draft, device)[-1].argmax())
                stop = False
            else:  # the head at the last position says whether the token drafted now ends the turn
                with torch.no_grad():
                    logits, h = halt(torch.tensor([ids + draft], dtype=torch.long, device=device))
                token = int(logits[0, -1].argmax())
                stop = float(torch.sigmoid(h[0, -1, 0])) >= threshold
            draft.append(token)
            if token == eos:
                break
            if stop:
                result.halted += i + 1 < min(k, room)
                break
        # the worker once over sequence + draft: its choice after each prefix of the draft
        choices = _next(worker, ids + draft, device)[len(ids) - 1:].argmax(-1).tolist()
        accepted = 0
        while accepted < len(draft) and draft[accepted] == choices[accepted]:
            accepted += 1
        emitted = draft[:accepted]
        if accepted < len(draft) or (not draft or draft[-1] != eos):
            emitted.append(int(choices[accepted]))  # the worker's token at the first mismatch, or the bonus one
        emitted = emitted[:room]
        if eos in emitted:
            emitted = emitted[: emitted.index(eos) + 1]
        result.steps += 1
        result.drafted += len(draft)
        result.accepted += accepted
        result.per_step.append(len(emitted))
        result.tokens += emitted
        ids += emitted
    return result


def speculate_packages(drafter: Any, worker: Any, prompt: list[int], prefill: str, length: int, pad: int, k: int,
                       max_new: int, eos: int, cache_len: int,
                       halt_threshold: float | None = None) -> tuple[Speculation, list[int]]:
    """Greedy speculative decoding with two packages (runtime/speed/backends.py: CoreML, or the reference
    interpreter), each with its KV cache: the drafter decodes, the worker checks the last accepted token
    plus k drafts with its `verify` function in one call. Returns the speculation and the worker's own
    greedy output (prefill then `decode`), which it must equal.

    Cache semantics: a verify call at position p writes p .. p + k; when only a of the k drafts are
    accepted, the next call starts at p + a + 1 and overwrites the rejected entries, which no call reads
    (each query attends to positions <= its own). The drafter's cache is handled the same way.

    `halt_threshold`: a drafter package with a `halt` output stops drafting after the token whose halt
    probability reaches it (the token that ends the worker's turn); the verify call still takes k + 1 tokens
    (its shape is fixed), the rest padded with `pad` and never accepted."""
    ids = np.full((1, length), pad, np.int32)
    ids[0, :len(prompt)] = prompt
    n = len(prompt)

    ws = worker.new_state()
    ref_first = int(np.argmax(worker.prefill(prefill, ids, ws)[n - 1]))
    reference, token, pos = [ref_first], ref_first, n
    while len(reference) < max_new and token != eos and pos < cache_len:
        token = int(np.argmax(worker.decode(token, pos, ws)))
        reference.append(token)
        pos += 1

    ws, ds = worker.new_state(), drafter.new_state()
    last = int(np.argmax(worker.prefill(prefill, ids, ws)[n - 1]))
    drafter.prefill(prefill, ids, ds)
    result = Speculation(tokens=[last])
    pos = n  # where `last` goes
    while len(result.tokens) < max_new and last != eos and pos + k < cache_len:
        draft, token = [], last
        for i in range(k):  # the drafter: `last` at pos, then its own tokens
            token = int(np.argmax(drafter.decode(token, pos + i, ds)))
            draft.append(token)
            halt = getattr(drafter, "last_halt", None)
            if halt_threshold is not None and halt is not None and 1.0 / (1.0 + np.exp(-halt)) >= halt_threshold:
                break  # this token ends the turn: no draft past it
        drafted = len(draft)
        result.halted += drafted < k
        choices = [int(t) for t in np.argmax(worker.verify([last, *draft, *[pad] * (k - drafted)], pos, ws), axis=-1)]
        accepted = 0
        while accepted < drafted and draft[accepted] == choices[accepted]:
            accepted += 1
        if accepted == drafted:  # the drafter never consumed its last draft: put it in its cache
            drafter.decode(draft[-1], pos + drafted, ds)
        emitted = [*draft[:accepted], choices[accepted]]
        emitted = emitted[: max_new - len(result.tokens)]
        if eos in emitted:
            emitted = emitted[: emitted.index(eos) + 1]
        result.steps += 1
        result.drafted += drafted
        result.accepted += accepted
        result.per_step.append(len(emitted))
        result.tokens += emitted
        pos += len(emitted)
        last = emitted[-1]
    return result, reference[: len(result.tokens)]
