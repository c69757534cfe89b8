"""The measurement behind a speed report: a fixed prompt slice, greedy generation, wall-clock times.

For each prompt (the first ``n`` rows of the spec's eval split, ``[bos] + prompt`` tokens): make a
fresh state, prefill at the smallest enumerated shape that holds the prompt (right-padded, as the
contracts say), take the first token (TTFT: the prefill call and its argmax), then decode greedily
one token per call until eos or ``max_new_tokens`` (decode tokens/s: decode steps over their time),
noting when the first complete tool call ends (``tool_call_end`` after a ``tool_call_start``). A
package without a decode function (a judge) measures TTFT only.
``warmup`` prompts run first and are not counted (the first CoreML prediction specializes the model).

The backend is anything with `new_state`, `prefill` and `decode` (runtime/speed/backends.py): CoreML
on a Mac, or the reference interpreter, which exercises every line here on any machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np


class Backend(Protocol):
    def new_state(self) -> Any: ...

    def prefill(self, function: str, ids: np.ndarray, state: Any) -> np.ndarray: ...  # [1, L] -> logits [L, V]

    def decode(self, token: int, position: int, state: Any) -> np.ndarray: ...  # -> logits [V]


@dataclass(frozen=True)
class Shapes:
    prefill: dict[int, str]  # enumerated length -> the function that takes it
    cache_len: int  # 0: no decode function (a prefill-only package: TTFT only)
    pad: int

    def for_prompt(self, n: int) -> int | None:
        fits = [length for length in self.prefill if length >= n]
        return min(fits) if fits else None


@dataclass(frozen=True)
class Stops:
    eos: int
    call_start: int | None
    call_end: int | None


@dataclass
class Timing:
    shape: int
    ttft_s: float
    decode_steps: int
    decode_s: float
    tool_call_s: float | None
    tokens: list[int] = field(default_factory=list)


def run_prompt(backend: Backend, prompt: list[int], shapes: Shapes, stops: Stops, max_new_tokens: int,
               clock: Callable[[], float] = time.perf_counter) -> Timing:
    n = len(prompt)
    shape = shapes.for_prompt(n)
    if shape is None:
        raise ValueError(f"a prompt of {n} tokens fits no prefill shape ({sorted(shapes.prefill)})")
    ids = np.full((1, shape), shapes.pad, np.int32)
    ids[0, :n] = prompt
    state = backend.new_state()
    start = clock()
    logits = backend.prefill(shapes.prefill[shape], ids, state)
    token = int(np.argmax(logits[n - 1]))
    first = clock()
    tokens, tool_at, opened = [token], None, token == stops.call_start
    position, steps = n, 0
    while shapes.cache_len and token != stops.eos and len(tokens) < max_new_tokens and position < shapes.cache_len:
        token = int(np.argmax(backend.decode(token, position, state)))
        tokens.append(token)
        position, steps = position + 1, steps + 1
        if token == stops.call_start:
            opened = True
        elif token == stops.call_end and opened and tool_at is None:
            tool_at = clock() - start
    return Timing(shape, first - start, steps, clock() - first, tool_at, tokens)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def _m(values: list[float], q: float, scale: float = 1.0) -> dict[str, Any]:
    if not values:
        return {"not_run": "no prompt produced this measurement", "n": 0}
    return {"value": _pct(values, q) * scale, "n": len(values)}


def summarize(timings: list[Timing]) -> dict[str, Any]:
    """The report's metrics: times in milliseconds, decode in tokens per second, each with its n."""
    ttft = [t.ttft_s for t in timings]
    tps = [t.decode_steps / t.decode_s for t in timings if t.decode_steps and t.decode_s > 0]
    calls = [t.tool_call_s for t in timings if t.tool_call_s is not None]
    by_shape: dict[str, Any] = {}
    for length in sorted({t.shape for t in timings}):
        by_shape[str(length)] = _m([t.ttft_s for t in timings if t.shape == length], 50, 1e3)
    return {"ttft_p50_ms": _m(ttft, 50, 1e3), "ttft_p90_ms": _m(ttft, 90, 1e3), "tps_p50": _m(tps, 50),
            "first_tool_call_p50_ms": _m(calls, 50, 1e3), "ttft_p50_ms_by_shape": by_shape,
            "decode_steps": sum(t.decode_steps for t in timings)}


def measure(backend: Backend, prompts: list[list[int]], shapes: Shapes, stops: Stops, *, max_new_tokens: int,
            warmup: list[list[int]] = (), progress: Callable[[int], None] = lambda i: None,
            ) -> tuple[dict[str, Any], list[Timing]]:
    """Run the `warmup` prompts uncounted, then time every prompt of `prompts`."""
    for prompt in warmup:
        run_prompt(backend, prompt, shapes, stops, max_new_tokens)
    timings = []
    for i, prompt in enumerate(prompts):
        timings.append(run_prompt(backend, prompt, shapes, stops, max_new_tokens))
        progress(i + 1)
    return summarize(timings), timings
