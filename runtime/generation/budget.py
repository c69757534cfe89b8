"""The spend budget: never exceeded, even with many requests in flight.

Before a request is sent its worst case is reserved: prompt tokens (an upper bound: see
`prompt_token_bound`) plus `max_tokens`, priced at the spec's dollars per million input and output
tokens, or counted as tokens when the cap is in tokens. A request is admitted only when everything
already spent plus everything reserved plus its own worst case stays within the cap. When its
answer comes back the reservation is replaced by what `usage` says it cost; a failed request
releases its reservation (an error answer is not billed by OpenAI-compatible APIs; a server that
bills failures should be given a lower cap). Responses already in the cache were paid in an earlier
run: `spent` starts from their recorded usage, so a resumed job keeps counting from where it was.

All methods run on the job's one event loop thread and never await, so admission is atomic; a
lock makes them safe from other threads too.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prices:
    """Dollars per million tokens; a cap in tokens when `max_usd` is None."""

    max_usd: float | None = None
    input_per_million: float = 0.0
    output_per_million: float = 0.0
    max_tokens: int | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The amount charged against the cap: dollars when the cap is dollars, else tokens."""
        if self.max_usd is not None:
            return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6
        return float(prompt_tokens + completion_tokens)

    @property
    def cap(self) -> float:
        if self.max_usd is not None:
            return self.max_usd
        return float(self.max_tokens) if self.max_tokens is not None else math.inf

    def unit(self, amount: float) -> str:
        return f"${amount:.4f}" if self.max_usd is not None else f"{amount:,.0f} tokens"


def prompt_token_bound(body: dict[str, Any]) -> int:
    """An upper bound on a request's prompt tokens without the teacher's tokenizer: every token of a
    byte-level tokenizer covers at least one byte, so the UTF-8 size of the messages and tools, plus
    a margin per message for the chat template's role markers, bounds it."""
    size = 0
    for message in body.get("messages") or []:
        size += 32 + len(str(message.get("content") or "").encode("utf-8"))
        for call in message.get("tool_calls") or []:
            size += 32 + len(str(call).encode("utf-8"))
    for tool in body.get("tools") or []:
        size += len(str(tool).encode("utf-8"))
    return size + 64


@dataclass
class Reservation:
    amount: float
    settled: bool = False


@dataclass
class Budget:
    prices: Prices
    spent: float = 0.0
    reserved: float = 0.0
    refused: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self, prompt_tokens: int, max_tokens: int) -> Reservation | None:
        """Admit a request at its worst case, or None when that could cross the cap."""
        worst = self.prices.cost(prompt_tokens, max_tokens)
        with self._lock:
            if self.spent + self.reserved + worst > self.prices.cap:
                self.refused += 1
                return None
            self.reserved += worst
            return Reservation(worst)

    def settle(self, reservation: Reservation, usage: dict[str, Any] | None) -> float:
        """Replace the reservation by the request's cost (its usage; the worst case when usage is missing)."""
        if usage and "prompt_tokens" in usage and "completion_tokens" in usage:
            actual = self.prices.cost(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        else:
            actual = reservation.amount
        with self._lock:
            if reservation.settled:
                raise RuntimeError("a reservation was settled twice")
            reservation.settled = True
            self.reserved -= reservation.amount
            self.spent += actual
        return actual

    def release(self, reservation: Reservation) -> None:
        """A request that was not answered costs nothing."""
        with self._lock:
            if not reservation.settled:
                reservation.settled = True
                self.reserved -= reservation.amount

    def add_paid(self, usage: dict[str, Any]) -> None:
        """A response paid in an earlier run (found in the cache)."""
        with self._lock:
            self.spent += self.prices.cost(int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))

    def describe(self) -> str:
        return f"{self.prices.unit(self.spent)} spent of {self.prices.unit(self.prices.cap)}"
